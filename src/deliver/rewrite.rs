//! Sender rewriting (`rewrite_sender`): the fix for `550 5.7.60 SendAsDenied`. Microsoft 365 lets a
//! signed-in mailbox send only as itself (or as addresses it has Send As rights for), and devices
//! send as whatever they were set up with (`scanner@printer.local`). The relay puts the route's
//! address into the envelope sender and the `From:` header, keeps the display name, and keeps the
//! original sender reachable through `Reply-To:`.
//!
//! Rules ([`rewrite_sender`]):
//! - A sender "passes" when it is the rewrite address or one of `allowed_senders`
//!   (case-insensitive). The envelope sender and the `From:` header are judged each on its own:
//!   only the one that does not pass is replaced. The null sender (`<>`, bounces) stays null: a
//!   delivery status notification must keep it (RFC 5321 §4.5.5).
//! - `From:` passes only when it holds exactly one address and that address passes. Otherwise it
//!   becomes `From: <display name of its first mailbox> <rewrite address>`; the other mailboxes of
//!   a multi-address `From:` survive only in `Reply-To:`. Folded fields, quoted and encoded-word
//!   (RFC 2047) display names, `From: addr` without brackets and `addr (Name)` comments are read;
//!   the display name is copied byte for byte (encoded words stay encoded, 8-bit stays 8-bit).
//! - `Reply-To:` is added, right after the new `From:`, with the original `From:` value, unless the
//!   message has one. A message without `From:` gets one (at the end of its header section) and, when
//!   its envelope sender was replaced, `Reply-To:` that envelope sender.
//! - Further `From:` fields (invalid, but seen) are removed, and so is a `Sender:` whose address
//!   does not pass: Exchange would check it as "send on behalf of".
//! - Only the header section changes; the body is byte-identical. A DKIM signature over `From:`
//!   breaks, which matters little for devices that do not sign.

use crate::config::SenderRewrite;

/// The new envelope sender and content when anything changed; `None` when both the envelope
/// sender and the `From:` header pass unchanged. `content` is a stored message (CRLF line endings;
/// bare LF is tolerated). The new envelope sender may be the old one when only `From:` changed.
///
/// The queue calls it per route before handing the message to the transport:
/// ```ignore
/// if let Some(rule) = &route.rewrite_sender
///     && let Some((sender, content)) = rewrite_sender(&content, &envelope.sender, rule)
/// { /* deliver with `sender` and `content` instead */ }
/// ```
pub fn rewrite_sender(
    content: &[u8],
    envelope_sender: &str,
    rule: &SenderRewrite,
) -> Option<(String, Vec<u8>)> {
    let passes = |address: &str| {
        address.eq_ignore_ascii_case(&rule.address)
            || rule
                .allowed_senders
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(address))
    };
    let envelope_passes = envelope_sender.is_empty() || passes(envelope_sender);
    let header = HeaderSection::parse(content);
    let from_fields: Vec<&Field> = header.fields_named(content, b"from").collect();
    let from = from_fields
        .first()
        .map(|field| parse_mailboxes(field.value(content)));
    let from_passes = from_fields.len() == 1
        && from.as_ref().is_some_and(|list| {
            list.count == 1 && list.first.as_ref().is_some_and(|m| passes(&m.address))
        });
    if envelope_passes && from_passes {
        return None;
    }
    let new_sender = if envelope_passes {
        envelope_sender.to_string()
    } else {
        rule.address.clone()
    };
    if from_passes {
        return Some((new_sender, content.to_vec()));
    }

    let has_reply_to = header.fields_named(content, b"reply-to").next().is_some();
    let display = from
        .as_ref()
        .and_then(|list| list.first.as_ref())
        .and_then(|m| m.display.clone());
    let mut new_from = b"From: ".to_vec();
    match &display {
        Some(name) => {
            new_from.extend_from_slice(name);
            new_from.extend_from_slice(format!(" <{}>\r\n", rule.address).as_bytes());
        }
        None => new_from.extend_from_slice(format!("{}\r\n", rule.address).as_bytes()),
    }
    let reply_to: Option<Vec<u8>> = if has_reply_to {
        None
    } else {
        match from_fields.first() {
            Some(field) if from.as_ref().is_some_and(|list| list.first.is_some()) => {
                let mut line = b"Reply-To:".to_vec();
                line.extend_from_slice(field.value(content));
                if !line.ends_with(b"\n") {
                    line.extend_from_slice(b"\r\n");
                }
                Some(line)
            }
            Some(_) => None,
            None if !envelope_passes => {
                Some(format!("Reply-To: <{envelope_sender}>\r\n").into_bytes())
            }
            None => None,
        }
    };

    let mut out = Vec::with_capacity(content.len() + new_from.len() + 128);
    let mut from_written = false;
    for field in &header.fields {
        let name = field.name(content);
        if name.eq_ignore_ascii_case(b"from") {
            if !from_written {
                out.extend_from_slice(&new_from);
                if let Some(reply_to) = &reply_to {
                    out.extend_from_slice(reply_to);
                }
                from_written = true;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"sender") {
            let sender = parse_mailboxes(field.value(content));
            let keep = sender.count == 1 && sender.first.is_some_and(|m| passes(&m.address));
            if !keep {
                continue;
            }
        }
        out.extend_from_slice(&content[field.start..field.end]);
    }
    let rest = &content[header.end..];
    if !from_written {
        // The last field may end the content without a line ending: the new field needs its own line.
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&new_from);
        if let Some(reply_to) = &reply_to {
            out.extend_from_slice(reply_to);
        }
        // Content that starts with a line that is no field has no header section: the added
        // fields need the empty line that makes one.
        if !rest.is_empty() && !rest.starts_with(b"\r\n") && !rest.starts_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(rest);
    Some((new_sender, out))
}

/// One header field: its bytes from the name to the end of its last (folded) line, line ending
/// included.
#[derive(Debug)]
struct Field {
    start: usize,
    /// The position of the `:`.
    colon: usize,
    end: usize,
}

impl Field {
    /// The name, without the blanks some writers put before the colon.
    fn name<'c>(&self, content: &'c [u8]) -> &'c [u8] {
        trim_blanks(&content[self.start..self.colon])
    }

    /// Everything after the colon, folds and line ending included.
    fn value<'c>(&self, content: &'c [u8]) -> &'c [u8] {
        &content[self.colon + 1..self.end]
    }
}

struct HeaderSection {
    fields: Vec<Field>,
    /// Where the header section ends: at the empty line (which belongs to what follows), or at the
    /// first line that is not a field, or at the end of the content.
    end: usize,
}

impl HeaderSection {
    fn parse(content: &[u8]) -> Self {
        let mut fields: Vec<Field> = Vec::new();
        let mut position = 0;
        while position < content.len() {
            let line_end = memchr::memchr(b'\n', &content[position..])
                .map_or(content.len(), |i| position + i + 1);
            let line = &content[position..line_end];
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.is_empty() {
                break;
            }
            if matches!(text[0], b' ' | b'\t') {
                match fields.last_mut() {
                    Some(field) => field.end = line_end,
                    // A continuation with nothing to continue: not a header section.
                    None => break,
                }
            } else {
                let Some(colon) = field_colon(text) else {
                    break;
                };
                fields.push(Field {
                    start: position,
                    colon: position + colon,
                    end: line_end,
                });
            }
            position = line_end;
        }
        HeaderSection {
            fields,
            end: position,
        }
    }

    fn fields_named<'a>(
        &'a self,
        content: &'a [u8],
        name: &'a [u8],
    ) -> impl Iterator<Item = &'a Field> + 'a {
        self.fields
            .iter()
            .filter(move |field| field.name(content).eq_ignore_ascii_case(name))
    }
}

/// The colon of a field line: a name of printable ASCII without `:` (blanks allowed before the
/// colon, as in obsolete syntax), then `:`.
fn field_colon(line: &[u8]) -> Option<usize> {
    let colon = memchr::memchr(b':', line)?;
    let name = trim_blanks(&line[..colon]);
    let valid = !name.is_empty()
        && name.iter().all(|b| (33..=126).contains(b))
        && line[..colon]
            .iter()
            .take(name.len())
            .all(|b| (33..=126).contains(b));
    valid.then_some(colon)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mailbox {
    /// The display name as written (a phrase: atoms, quoted strings, encoded words), or made from
    /// an `addr (Name)` comment.
    display: Option<Vec<u8>>,
    address: String,
}

struct MailboxList {
    first: Option<Mailbox>,
    /// How many mailboxes the field names.
    count: usize,
}

/// The first mailbox of an address list and how many there are. Commas, `<`, `>` inside quoted
/// strings and comments do not count; folding line breaks are blanks.
fn parse_mailboxes(value: &[u8]) -> MailboxList {
    let segments: Vec<&[u8]> = split_top_level(value)
        .into_iter()
        .filter(|segment| !trim_blanks(segment).is_empty())
        .collect();
    MailboxList {
        first: segments.first().and_then(|segment| parse_mailbox(segment)),
        count: segments.len(),
    }
}

fn parse_mailbox(segment: &[u8]) -> Option<Mailbox> {
    let structure = scan(segment);
    if let Some(open) = structure.iter().position(|&(_, kind)| kind == Kind::Open) {
        let open_at = structure[open].0;
        let close_at = structure[open..]
            .iter()
            .find(|&&(_, kind)| kind == Kind::Close)
            .map_or(segment.len(), |&(i, _)| i);
        let inside = trim_blanks(&segment[open_at + 1..close_at]);
        // An obsolete source route (`<@relay:user@host>`) is not part of the address.
        let inside = match inside.first() {
            Some(b'@') => inside
                .iter()
                .position(|&b| b == b':')
                .map_or(inside, |colon| &inside[colon + 1..]),
            _ => inside,
        };
        let address = address_text(inside)?;
        let display = trim_blanks(&segment[..open_at]);
        return Some(Mailbox {
            display: (!display.is_empty()).then(|| display.to_vec()),
            address,
        });
    }
    // `addr` or `addr (Name)`: the address is what is left without comments and blanks.
    let mut bare = Vec::new();
    let mut comment: Option<Vec<u8>> = None;
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    let mut current_comment = Vec::new();
    for &b in segment {
        if escaped {
            escaped = false;
            if depth > 0 {
                current_comment.push(b);
            } else {
                bare.push(b);
            }
            continue;
        }
        match b {
            b'\\' if quoted || depth > 0 => escaped = true,
            b'"' if depth == 0 => {
                quoted = !quoted;
                bare.push(b);
            }
            b'(' if !quoted => {
                if depth > 0 {
                    current_comment.push(b);
                }
                depth += 1;
            }
            b')' if !quoted && depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    if comment.is_none() {
                        comment = Some(std::mem::take(&mut current_comment));
                    }
                    current_comment.clear();
                } else {
                    current_comment.push(b);
                }
            }
            _ if depth > 0 => current_comment.push(b),
            b' ' | b'\t' | b'\r' | b'\n' if !quoted => {}
            _ => bare.push(b),
        }
    }
    let address = address_text(&bare)?;
    let display = comment
        .map(|c| trim_blanks(&c).to_vec())
        .filter(|c| !c.is_empty())
        .map(|c| phrase(&c));
    Some(Mailbox { display, address })
}

/// An address as text, when it looks like one (`local@domain`, no blanks).
fn address_text(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes).trim().to_string();
    let (local, domain) = text.rsplit_once('@')?;
    let usable = !local.is_empty()
        && !domain.is_empty()
        && !text.contains(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';'));
    usable.then_some(text)
}

/// Text (from a comment) as a display name: as it is when it is atoms and blanks, otherwise as a
/// quoted string.
fn phrase(text: &[u8]) -> Vec<u8> {
    let special = |b: &u8| b"()<>[]:;@\\,.\"".contains(b);
    if !text.iter().any(special) {
        return text.to_vec();
    }
    let mut quoted = vec![b'"'];
    for &b in text {
        if matches!(b, b'"' | b'\\') {
            quoted.push(b'\\');
        }
        quoted.push(b);
    }
    quoted.push(b'"');
    quoted
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `<` outside quotes and comments.
    Open,
    /// `>` outside quotes and comments.
    Close,
    /// `,` outside quotes, comments and angle brackets.
    Separator,
}

/// The structural characters of a header value, with their positions.
fn scan(value: &[u8]) -> Vec<(usize, Kind)> {
    let mut found = Vec::new();
    let mut quoted = false;
    let mut depth = 0usize;
    let mut angle = false;
    let mut escaped = false;
    for (i, &b) in value.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted || depth > 0 => escaped = true,
            b'"' if depth == 0 => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted && depth > 0 => depth -= 1,
            _ if quoted || depth > 0 => {}
            b'<' if !angle => {
                angle = true;
                found.push((i, Kind::Open));
            }
            b'>' if angle => {
                angle = false;
                found.push((i, Kind::Close));
            }
            b',' if !angle => found.push((i, Kind::Separator)),
            _ => {}
        }
    }
    found
}

fn split_top_level(value: &[u8]) -> Vec<&[u8]> {
    let mut segments = Vec::new();
    let mut start = 0;
    for (i, kind) in scan(value) {
        if kind == Kind::Separator {
            segments.push(&value[start..i]);
            start = i + 1;
        }
    }
    segments.push(&value[start..]);
    segments
}

/// Without leading and trailing blanks, folding line breaks included.
fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing: a message without `From:` whose last header field ends the content without
    /// a line ending got `From:` glued to the end of that field, so the result still had no `From:`
    /// (and a second rewrite added another one).
    #[test]
    fn a_from_added_after_an_unterminated_last_field_starts_its_own_line() {
        let (sender, content) =
            rewrite_sender(b"Subject: no line end", "dev@printer.local", &rule(&[])).unwrap();
        assert_eq!(sender, "scanner@contoso.com");
        assert_eq!(
            String::from_utf8(content.clone()).unwrap(),
            "Subject: no line end\r\nFrom: scanner@contoso.com\r\nReply-To: <dev@printer.local>\r\n"
        );
        assert_eq!(rewrite_sender(&content, &sender, &rule(&[])), None);
    }

    fn rule(allowed: &[&str]) -> SenderRewrite {
        SenderRewrite {
            address: "scanner@contoso.com".to_string(),
            allowed_senders: allowed.iter().map(|a| a.to_string()).collect(),
        }
    }

    const BODY: &str = "\r\nHello,\r\nFrom: not a header\r\n.\r\n";

    /// (what, envelope sender, header section, allowed senders, expected envelope sender, expected
    /// header section; `None`: unchanged).
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
        Option<(&'static str, &'static str)>,
    );

    #[test]
    fn senders_are_rewritten_as_the_table_says() {
        let cases: &[Case] = &[
            (
                "a device's own address: both replaced, the display name kept",
                "scan@printer.local",
                "From: \"Scanner, 3rd floor\" <scan@printer.local>\r\nSubject: Scan\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "From: \"Scanner, 3rd floor\" <scanner@contoso.com>\r\nReply-To: \"Scanner, 3rd floor\" <scan@printer.local>\r\nSubject: Scan\r\n",
                )),
            ),
            (
                "already the route's address: unchanged",
                "Scanner@Contoso.com",
                "From: Scanner <scanner@contoso.com>\r\nSubject: x\r\n",
                &[],
                None,
            ),
            (
                "an allowed sender: unchanged",
                "helpdesk@contoso.com",
                "From: Help Desk <HelpDesk@contoso.com>\r\n",
                &["helpdesk@contoso.com"],
                None,
            ),
            (
                "the envelope passes, the header does not: only From changes",
                "scanner@contoso.com",
                "Subject: x\r\nFrom: scan@printer.local\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "Subject: x\r\nFrom: scanner@contoso.com\r\nReply-To: scan@printer.local\r\n",
                )),
            ),
            (
                "the header passes, the envelope does not: only the envelope changes",
                "bounce-123@printer.local",
                "From: scanner@contoso.com\r\n",
                &[],
                Some(("scanner@contoso.com", "From: scanner@contoso.com\r\n")),
            ),
            (
                "the null sender stays null",
                "",
                "From: MAILER-DAEMON@relay.contoso.com\r\n",
                &[],
                Some((
                    "",
                    "From: scanner@contoso.com\r\nReply-To: MAILER-DAEMON@relay.contoso.com\r\n",
                )),
            ),
            (
                "a folded From with an encoded-word name",
                "scan@printer.local",
                "From: =?utf-8?Q?Scanner_B=C3=BCro?=\r\n <scan@printer.local>\r\nTo: a@contoso.com\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "From: =?utf-8?Q?Scanner_B=C3=BCro?= <scanner@contoso.com>\r\nReply-To: =?utf-8?Q?Scanner_B=C3=BCro?=\r\n <scan@printer.local>\r\nTo: a@contoso.com\r\n",
                )),
            ),
            (
                "an old-style comment becomes the display name",
                "scan@printer.local",
                "From: scan@printer.local (Scanner, 3rd floor)\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "From: \"Scanner, 3rd floor\" <scanner@contoso.com>\r\nReply-To: scan@printer.local (Scanner, 3rd floor)\r\n",
                )),
            ),
            (
                "brackets without a name",
                "scan@printer.local",
                "From:<scan@printer.local>\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "From: scanner@contoso.com\r\nReply-To:<scan@printer.local>\r\n",
                )),
            ),
            (
                "several addresses: the first one's name, all of them in Reply-To",
                "a@printer.local",
                "From: A <a@printer.local>, \"B, Second\" <b@printer.local>\r\nSender: a@printer.local\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "From: A <scanner@contoso.com>\r\nReply-To: A <a@printer.local>, \"B, Second\" <b@printer.local>\r\n",
                )),
            ),
            (
                "even when the first of several addresses passes",
                "scanner@contoso.com",
                "From: scanner@contoso.com, b@printer.local\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "From: scanner@contoso.com\r\nReply-To: scanner@contoso.com, b@printer.local\r\n",
                )),
            ),
            (
                "no From at all: one is added, Reply-To is the old envelope sender",
                "scan@printer.local",
                "Subject: no from\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "Subject: no from\r\nFrom: scanner@contoso.com\r\nReply-To: <scan@printer.local>\r\n",
                )),
            ),
            (
                "an existing Reply-To is kept and not doubled",
                "scan@printer.local",
                "Reply-To: it@contoso.com\r\nFROM : Scanner <scan@printer.local>\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "Reply-To: it@contoso.com\r\nFrom: Scanner <scanner@contoso.com>\r\n",
                )),
            ),
            (
                "a second From is removed",
                "scan@printer.local",
                "From: scan@printer.local\r\nFrom: other@printer.local\r\nX-A: 1\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "From: scanner@contoso.com\r\nReply-To: scan@printer.local\r\nX-A: 1\r\n",
                )),
            ),
            (
                "a Sender that passes is kept",
                "scan@printer.local",
                "From: scan@printer.local\r\nSender: Scanner <scanner@contoso.com>\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "From: scanner@contoso.com\r\nReply-To: scan@printer.local\r\nSender: Scanner <scanner@contoso.com>\r\n",
                )),
            ),
            (
                "quoted specials and comments in the name do not split it",
                "scan@printer.local",
                "From: \"a <b>, c\" (x, <y>) <scan@printer.local>\r\n",
                &[],
                Some((
                    "scanner@contoso.com",
                    "From: \"a <b>, c\" (x, <y>) <scanner@contoso.com>\r\nReply-To: \"a <b>, c\" (x, <y>) <scan@printer.local>\r\n",
                )),
            ),
            (
                "an unparsable From is replaced without a Reply-To",
                "scan@printer.local",
                "From: Scanner\r\n",
                &[],
                Some(("scanner@contoso.com", "From: scanner@contoso.com\r\n")),
            ),
        ];
        for (what, sender, header, allowed, expected) in cases {
            let content = format!("{header}{BODY}");
            let got = rewrite_sender(content.as_bytes(), sender, &rule(allowed));
            match (got, expected) {
                (None, None) => {}
                (Some((new_sender, new_content)), Some((want_sender, want_header))) => {
                    assert_eq!(new_sender, *want_sender, "{what}");
                    let new_content = String::from_utf8(new_content).unwrap();
                    assert_eq!(new_content, format!("{want_header}{BODY}"), "{what}");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_body_stays_byte_identical() {
        let mut content = b"From: Scanner <scan@printer.local>\r\nSubject: x\r\n\r\n".to_vec();
        let body: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        content.extend_from_slice(&body);
        let (_, new) = rewrite_sender(&content, "scan@printer.local", &rule(&[])).unwrap();
        assert!(new.ends_with(&body));
        let header_end = new.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
        assert_eq!(
            &new[header_end..],
            &content[content.len() - body.len() - 2..]
        );
    }

    #[test]
    fn eight_bit_display_names_are_copied_byte_for_byte() {
        // Latin-1 "Büro", as old devices send it.
        let content = b"From: B\xfcro <scan@printer.local>\r\n\r\nx\r\n";
        let (_, new) = rewrite_sender(content, "scan@printer.local", &rule(&[])).unwrap();
        assert!(
            new.starts_with(b"From: B\xfcro <scanner@contoso.com>\r\n"),
            "{new:?}"
        );
    }

    #[test]
    fn a_message_without_a_header_section_gets_a_from() {
        let content = b"\r\njust a body\r\n";
        let (_, new) = rewrite_sender(content, "scan@printer.local", &rule(&[])).unwrap();
        assert_eq!(
            new,
            b"From: scanner@contoso.com\r\nReply-To: <scan@printer.local>\r\n\r\njust a body\r\n"
        );
    }

    #[test]
    fn content_without_a_header_section_is_given_one() {
        let content = b"just a body\r\n";
        let (_, new) = rewrite_sender(content, "scan@printer.local", &rule(&[])).unwrap();
        assert_eq!(
            new,
            b"From: scanner@contoso.com\r\nReply-To: <scan@printer.local>\r\n\r\njust a body\r\n"
        );
    }

    #[test]
    fn bare_lf_header_sections_are_read() {
        let content = b"From: Scanner <scan@printer.local>\nSubject: x\n\nbody\n";
        let (_, new) = rewrite_sender(content, "scan@printer.local", &rule(&[])).unwrap();
        assert_eq!(
            new,
            b"From: Scanner <scanner@contoso.com>\r\nReply-To: Scanner <scan@printer.local>\nSubject: x\n\nbody\n"
        );
    }
}
