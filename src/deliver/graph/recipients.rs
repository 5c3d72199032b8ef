//! Graph has no envelope: it sends to every address in the To, Cc and Bcc header fields of the MIME it
//! is given. [`restrict_to_envelope`] rewrites the header section so that those fields name exactly the
//! envelope recipients of one delivery (the rule is explained in the parent module's docs).
//!
//! Only the address fields change; every other header line and the body pass byte for byte, and a
//! message whose To/Cc already name exactly the envelope and that has no Bcc field is not copied at all.
//! The address lists are read with RFC 5322's grammar for what matters here (quoted strings, comments,
//! angle addresses, groups), on bytes, so 8-bit and UTF-8 header text passes untouched.

use std::borrow::Cow;
use std::collections::HashSet;

/// `content` with its To/Cc reduced to the envelope `recipients`, its Bcc/Resent-Bcc removed, and a Bcc
/// field that lists the envelope recipients To/Cc do not name.
pub fn restrict_to_envelope<'a>(content: &'a [u8], recipients: &[String]) -> Cow<'a, [u8]> {
    let envelope: HashSet<String> = recipients.iter().map(|r| fold_case(r.as_bytes())).collect();
    let (fields, rest) = split_header_section(content);

    let mut changed = false;
    let mut header: Vec<u8> = Vec::with_capacity(content.len().min(64 * 1024) + 256);
    let mut named: HashSet<String> = HashSet::new();
    for field in &fields {
        match field.name().to_ascii_lowercase().as_slice() {
            b"bcc" | b"resent-bcc" => changed = true,
            b"to" | b"cc" => {
                let list = AddressList::parse(field.value());
                let kept = list.keep(&envelope);
                named.extend(kept.addresses());
                if kept.is_unchanged() {
                    header.extend_from_slice(field.raw);
                } else {
                    changed = true;
                    if let Some(text) = kept.render() {
                        header.extend_from_slice(field.name());
                        header.extend_from_slice(b": ");
                        header.extend_from_slice(&text);
                        header.extend_from_slice(b"\r\n");
                    }
                }
            }
            _ => header.extend_from_slice(field.raw),
        }
    }

    let mut seen = HashSet::new();
    let bcc: Vec<&str> = recipients
        .iter()
        .filter(|r| {
            let key = fold_case(r.as_bytes());
            !named.contains(&key) && seen.insert(key)
        })
        .map(String::as_str)
        .collect();
    if !bcc.is_empty() {
        changed = true;
        if !header.is_empty() && !header.ends_with(b"\n") {
            header.extend_from_slice(b"\r\n");
        }
        header.extend_from_slice(b"Bcc: ");
        header.extend_from_slice(bcc.join(",\r\n ").as_bytes());
        header.extend_from_slice(b"\r\n");
    }

    if !changed {
        return Cow::Borrowed(content);
    }
    header.extend_from_slice(rest);
    Cow::Owned(header)
}

/// One header field with its continuation lines, as it was (terminators included).
struct Field<'a> {
    raw: &'a [u8],
    colon: Option<usize>,
}

impl<'a> Field<'a> {
    fn name(&self) -> &'a [u8] {
        match self.colon {
            Some(colon) => trim(&self.raw[..colon]),
            None => b"",
        }
    }

    fn value(&self) -> &'a [u8] {
        match self.colon {
            Some(colon) => &self.raw[colon + 1..],
            None => b"",
        }
    }
}

/// The header fields, and the rest of the message from the empty line on (or nothing when the message
/// has no body).
fn split_header_section(content: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut pos = 0;
    let mut start: Option<usize> = None;
    while pos < content.len() {
        let end = memchr::memchr(b'\n', &content[pos..]).map_or(content.len(), |i| pos + i + 1);
        let line = &content[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation && let Some(s) = start.replace(pos) {
            fields.push(Field::new(&content[s..pos]));
        }
        start.get_or_insert(pos);
        pos = end;
    }
    if let Some(s) = start {
        fields.push(Field::new(&content[s..pos]));
    }
    (fields, &content[pos..])
}

impl<'a> Field<'a> {
    fn new(raw: &'a [u8]) -> Self {
        Field {
            raw,
            colon: memchr::memchr(b':', raw),
        }
    }
}

/// A mailbox in an address list: its text as written (unfolded, trimmed) and its address for matching.
#[derive(Debug, Clone)]
struct Mailbox {
    text: Vec<u8>,
    /// Case-folded addr-spec; empty when none could be read.
    address: String,
}

#[derive(Debug, Clone)]
enum Item {
    Mailbox(Mailbox),
    Group {
        display: Vec<u8>,
        members: Vec<Mailbox>,
    },
}

/// A To/Cc value read into items, and whether filtering removed any of them.
#[derive(Debug)]
struct AddressList {
    items: Vec<Item>,
    removed: bool,
}

impl AddressList {
    fn parse(value: &[u8]) -> AddressList {
        let value = unfold(value);
        let mut items = Vec::new();
        let mut group: Option<(Vec<u8>, Vec<Mailbox>)> = None;
        let mut start = 0;
        let mut i = 0;
        while i < value.len() {
            match value[i] {
                b'"' => i = skip_quoted(&value, i),
                b'(' => i = skip_comment(&value, i),
                b'<' => i = skip_angle(&value, i),
                b',' => {
                    push_mailbox(&value[start..i], &mut group, &mut items);
                    start = i + 1;
                    i += 1;
                }
                b':' if group.is_none() => {
                    group = Some((trim(&value[start..i]).to_vec(), Vec::new()));
                    start = i + 1;
                    i += 1;
                }
                b';' if group.is_some() => {
                    push_mailbox(&value[start..i], &mut group, &mut items);
                    let (display, members) = group.take().expect("in a group");
                    items.push(Item::Group { display, members });
                    start = i + 1;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        push_mailbox(&value[start..], &mut group, &mut items);
        if let Some((display, members)) = group {
            items.push(Item::Group { display, members });
        }
        AddressList {
            items,
            removed: false,
        }
    }

    /// Only the mailboxes whose address is in `envelope`; groups keep their name while they keep a
    /// member. Anything that is not a matching address (an unreadable item, an empty group) goes.
    fn keep(self, envelope: &HashSet<String>) -> AddressList {
        let wanted = |m: &Mailbox| envelope.contains(&m.address);
        let mut removed = false;
        let mut items = Vec::new();
        for item in self.items {
            match item {
                Item::Mailbox(m) if wanted(&m) => items.push(Item::Mailbox(m)),
                Item::Mailbox(_) => removed = true,
                Item::Group { display, members } => {
                    let before = members.len();
                    let members: Vec<Mailbox> = members.into_iter().filter(wanted).collect();
                    removed |= members.len() != before || members.is_empty();
                    if !members.is_empty() {
                        items.push(Item::Group { display, members });
                    }
                }
            }
        }
        AddressList { items, removed }
    }

    fn is_unchanged(&self) -> bool {
        !self.removed
    }

    fn addresses(&self) -> impl Iterator<Item = String> + '_ {
        self.items
            .iter()
            .flat_map(|item| match item {
                Item::Mailbox(m) => std::slice::from_ref(m).iter(),
                Item::Group { members, .. } => members.iter(),
            })
            .map(|m| m.address.clone())
    }

    /// The field value, one item per line; `None` when nothing is left.
    fn render(&self) -> Option<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for item in &self.items {
            match item {
                Item::Mailbox(m) => parts.push(m.text.clone()),
                Item::Group { display, members } => {
                    let mut text = display.clone();
                    text.extend_from_slice(b": ");
                    text.extend_from_slice(
                        &members
                            .iter()
                            .map(|m| m.text.as_slice())
                            .collect::<Vec<_>>()
                            .join(&b", "[..]),
                    );
                    text.push(b';');
                    parts.push(text);
                }
            }
        }
        (!parts.is_empty()).then(|| parts.join(&b",\r\n "[..]))
    }
}

fn push_mailbox(
    segment: &[u8],
    group: &mut Option<(Vec<u8>, Vec<Mailbox>)>,
    items: &mut Vec<Item>,
) {
    let text = trim(segment);
    if strip_comments(text).iter().all(u8::is_ascii_whitespace) {
        // `a,,b`, a trailing comma, an empty group's inside: nothing to keep or to lose.
        return;
    }
    let mailbox = Mailbox {
        text: text.to_vec(),
        address: address_of(text),
    };
    match group {
        Some((_, members)) => members.push(mailbox),
        None => items.push(Item::Mailbox(mailbox)),
    }
}

/// The case-folded addr-spec of one mailbox: what is inside its angle brackets if it has them (after an
/// obsolete source route), else the whole text; comments and whitespace outside quotes removed.
fn address_of(mailbox: &[u8]) -> String {
    let mut i = 0;
    let mut angle = None;
    while i < mailbox.len() {
        // An unclosed quoted string, comment or `<` runs to the end: no address to read (and the
        // text, written again before a group's `;` or a `,`, would swallow it and be read differently).
        let closed = match mailbox[i] {
            b'"' => quoted_end(mailbox, i),
            b'(' => comment_end(mailbox, i),
            b'<' => angle_end(mailbox, i).inspect(|&end| angle = Some(&mailbox[i + 1..end - 1])),
            _ => Some(i + 1),
        };
        match closed {
            Some(end) => i = end,
            None => return String::new(),
        }
    }
    let spec = without_whitespace(&strip_comments(angle.unwrap_or(mailbox)));
    // `<@relay1,@relay2:user@example.com>`
    let spec = match (spec.first(), memchr::memrchr(b':', &spec)) {
        (Some(b'@'), Some(colon)) => &spec[colon + 1..],
        _ => &spec[..],
    };
    fold_case(spec)
}

/// Addresses compare without regard to case: Exchange treats local parts so, and domains are so.
fn fold_case(address: &[u8]) -> String {
    String::from_utf8_lossy(address).to_lowercase()
}

/// Index just past the quoted string that starts at `start` (the end of `text` when it is not closed).
fn skip_quoted(text: &[u8], start: usize) -> usize {
    quoted_end(text, start).unwrap_or(text.len())
}

/// Index just past the quoted string that starts at `start`; `None` when it is not closed.
fn quoted_end(text: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Index just past the (possibly nested) comment that starts at `start` (the end of `text` when it is
/// not closed).
fn skip_comment(text: &[u8], start: usize) -> usize {
    comment_end(text, start).unwrap_or(text.len())
}

/// Index just past the (possibly nested) comment that starts at `start`; `None` when it is not closed.
fn comment_end(text: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = start;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Index just past the angle address that starts at `start` (the end of `text` when it is not closed).
fn skip_angle(text: &[u8], start: usize) -> usize {
    angle_end(text, start).unwrap_or(text.len())
}

/// Index just past the angle address that starts at `start`; `None` when it, or a quoted string in
/// it, is not closed.
fn angle_end(text: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'"' => i = quoted_end(text, i)?,
            b'>' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn strip_comments(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let end = skip_quoted(text, i);
                out.extend_from_slice(&text[i..end]);
                i = end;
            }
            b'(' => {
                i = skip_comment(text, i);
                out.push(b' ');
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `text` without whitespace outside quoted strings.
fn without_whitespace(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'"' {
            let end = skip_quoted(text, i);
            out.extend_from_slice(&text[i..end]);
            i = end;
        } else {
            if !text[i].is_ascii_whitespace() {
                out.push(text[i]);
            }
            i += 1;
        }
    }
    out
}

/// The value with its line breaks removed (RFC 5322 unfolding).
fn unfold(value: &[u8]) -> Vec<u8> {
    value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect()
}

fn trim(text: &[u8]) -> &[u8] {
    text.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(content: &str, recipients: &[&str]) -> String {
        let recipients: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
        String::from_utf8(restrict_to_envelope(content.as_bytes(), &recipients).into_owned())
            .unwrap()
    }

    /// Found by fuzzing (`header_rewrite`): an unclosed `<` lost the address's last byte, so
    /// `<bob@example.com` matched the envelope recipient `bob@example.co`; and a mailbox with an
    /// unclosed `<` in a group was written back before the group's `;`, which it then swallowed,
    /// so restricting the result again changed it. Such a mailbox is unreadable: it goes, and the
    /// envelope recipient is named in Bcc.
    #[test]
    fn a_mailbox_with_an_unclosed_angle_bracket_is_unreadable() {
        assert_eq!(address_of(b"Bob <bob@example.com"), "");
        assert_eq!(address_of(b"Bob <bob@example.com>"), "bob@example.com");
        assert_eq!(address_of(b"<"), "");
        assert_eq!(address_of(b"<>"), "");
        for (content, envelope) in [
            ("Cc: Bob <bob@example.com\r\n\r\nbody\r\n", "bob@example.co"),
            (
                "Cc: Bob <bob@example.com\r\n\r\nbody\r\n",
                "bob@example.com",
            ),
            ("Cc:c,:<m\r\n\r\nbody\r\n", "m"),
        ] {
            let once = rewrite(content, &[envelope]);
            assert_eq!(once, format!("Bcc: {envelope}\r\n\r\nbody\r\n"));
            assert_eq!(rewrite(&once, &[envelope]), once);
        }
    }

    #[test]
    fn a_mailbox_with_an_unclosed_quote_or_comment_is_unreadable() {
        assert_eq!(address_of(b"\"bob@example.com"), "");
        assert_eq!(address_of(b"\"a\\\""), "");
        assert_eq!(address_of(b"bob@example.com (Bob"), "");
        assert_eq!(address_of(b"<\"a>"), "");
        assert_eq!(address_of(b"\"Bob\" <bob@example.com>"), "bob@example.com");
        assert_eq!(address_of(b"bob@example.com (Bob)"), "bob@example.com");
        // Fuzzing found the first: a group member read as `"` was written back before the group's
        // `;`, which it then swallowed, so restricting the result again changed it.
        for (content, envelope) in [
            ("To:x,:\"\r\n\r\nbody\r\n", "\""),
            ("To:g:<\"a>\r\n\r\nbody\r\n", "\"a"),
            ("Cc:g:(c\r\n\r\nbody\r\n", "(c"),
        ] {
            let once = rewrite(content, &[envelope]);
            assert_eq!(once, format!("Bcc: {envelope}\r\n\r\nbody\r\n"));
            assert_eq!(rewrite(&once, &[envelope]), once);
        }
    }

    const RECEIVED: &str = "Received: from scanner1 ([127.0.0.1])\r\n\tby relay.test (smarthost) with ESMTP id X; Mon, 1 Jan 2024 00:00:00 +0000\r\n";

    #[test]
    fn a_message_whose_headers_name_exactly_the_envelope_is_not_copied() {
        let content = format!(
            "{RECEIVED}From: scanner@contoso.example\r\nTo: Boss <boss@contoso.example>,\r\n\tclerk@contoso.example\r\nCc: \"Doe, Jane\" <jane@contoso.example>\r\nSubject: Scan\r\n\r\nbody\r\nTo: not a header\r\n"
        );
        let recipients: Vec<String> = [
            "BOSS@contoso.example",
            "clerk@contoso.example",
            "jane@Contoso.Example",
        ]
        .map(String::from)
        .to_vec();
        let out = restrict_to_envelope(content.as_bytes(), &recipients);
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(&*out, content.as_bytes());
    }

    #[test]
    fn header_recipients_are_reduced_to_the_envelope_and_bcc_is_rebuilt() {
        // (content, envelope recipients, expected)
        let cases: &[(&str, &[&str], &str)] = &[
            // Bcc recipient only in the envelope.
            (
                "To: a@x.example\r\nSubject: s\r\n\r\nbody\r\n",
                &["a@x.example", "secret@x.example"],
                "To: a@x.example\r\nSubject: s\r\nBcc: secret@x.example\r\n\r\nbody\r\n",
            ),
            // The client's own Bcc field goes, whoever it names.
            (
                "To: a@x.example\r\nBcc: old@x.example,\r\n other@x.example\r\nSubject: s\r\n\r\nb\r\n",
                &["a@x.example"],
                "To: a@x.example\r\nSubject: s\r\n\r\nb\r\n",
            ),
            (
                "To: a@x.example\r\nbcc: hidden@x.example\r\n\r\nb\r\n",
                &["a@x.example", "hidden@x.example"],
                "To: a@x.example\r\nBcc: hidden@x.example\r\n\r\nb\r\n",
            ),
            // A header recipient routed elsewhere (or not in the envelope at all) is removed.
            (
                "To: A <a@x.example>, B <b@y.example>\r\nCc: c@y.example\r\nSubject: s\r\n\r\nb\r\n",
                &["a@x.example"],
                "To: A <a@x.example>\r\nSubject: s\r\n\r\nb\r\n",
            ),
            // Only recipients elsewhere in To: the field goes, the envelope recipient is in Bcc.
            (
                "To: b@y.example\r\nSubject: s\r\n\r\nb\r\n",
                &["a@x.example"],
                "Subject: s\r\nBcc: a@x.example\r\n\r\nb\r\n",
            ),
            // Quoted display names with commas and angle brackets, comments, folding.
            (
                "To: \"Doe, John <boss>\" <john@x.example>,\r\n (comment, with comma) b@y.example,\r\n\tc@x.example (Carol)\r\n\r\nb\r\n",
                &["john@x.example", "c@x.example"],
                "To: \"Doe, John <boss>\" <john@x.example>,\r\n c@x.example (Carol)\r\n\r\nb\r\n",
            ),
            // Groups keep their name while they keep a member; empty groups go.
            (
                "To: Team: a@x.example, b@y.example;, undisclosed-recipients:;\r\n\r\nb\r\n",
                &["a@x.example"],
                "To: Team: a@x.example;\r\n\r\nb\r\n",
            ),
            (
                "To: undisclosed-recipients:;\r\n\r\nb\r\n",
                &["a@x.example"],
                "Bcc: a@x.example\r\n\r\nb\r\n",
            ),
            // An address that cannot be matched (no domain, garbage) is not left for Graph to guess.
            (
                "To: John, a@x.example\r\n\r\nb\r\n",
                &["a@x.example"],
                "To: a@x.example\r\n\r\nb\r\n",
            ),
            // Obsolete source route.
            (
                "Cc: <@relay.example:a@x.example>\r\n\r\nb\r\n",
                &["a@x.example"],
                "Cc: <@relay.example:a@x.example>\r\n\r\nb\r\n",
            ),
            // Duplicate envelope recipients are listed once; order of the envelope.
            (
                "Subject: s\r\n\r\nb\r\n",
                &["b@x.example", "a@x.example", "B@x.example"],
                "Subject: s\r\nBcc: b@x.example,\r\n a@x.example\r\n\r\nb\r\n",
            ),
            // Resent-Bcc must not leak either.
            (
                "Resent-Bcc: r@x.example\r\nTo: a@x.example\r\n\r\nb\r\n",
                &["a@x.example"],
                "To: a@x.example\r\n\r\nb\r\n",
            ),
            // No body, no final line break.
            (
                "To: b@y.example\r\nSubject: s",
                &["a@x.example"],
                "Subject: s\r\nBcc: a@x.example\r\n",
            ),
            // Non-ASCII (SMTPUTF8) addresses and display names pass as bytes.
            (
                "To: =?utf-8?q?J=C3=BCrgen?= <jürgen@bücher.example>, Zoë <zoe@y.example>\r\n\r\nb\r\n",
                &["Jürgen@Bücher.example"],
                "To: =?utf-8?q?J=C3=BCrgen?= <jürgen@bücher.example>\r\n\r\nb\r\n",
            ),
            // Body lines that look like headers are body.
            (
                "Subject: s\r\n\r\nTo: b@y.example\r\nBcc: z@y.example\r\n",
                &["a@x.example"],
                "Subject: s\r\nBcc: a@x.example\r\n\r\nTo: b@y.example\r\nBcc: z@y.example\r\n",
            ),
        ];
        for (content, recipients, expected) in cases {
            let got = rewrite(&format!("{RECEIVED}{content}"), recipients);
            assert_eq!(
                got,
                format!("{RECEIVED}{expected}"),
                "{content:?} for {recipients:?}"
            );
        }
    }

    #[test]
    fn addresses_are_read_from_any_mailbox_form() {
        let cases = [
            ("a@x.example", "a@x.example"),
            ("  A@X.Example  ", "a@x.example"),
            ("Name <a@x.example>", "a@x.example"),
            ("\"Quoted <x@y>\" <a@x.example>", "a@x.example"),
            ("a@x.example (Comment <c@d>)", "a@x.example"),
            ("<\"odd local\"@x.example>", "\"odd local\"@x.example"),
            ("John", "john"),
        ];
        for (text, address) in cases {
            assert_eq!(address_of(text.as_bytes()), address, "{text}");
        }
    }
}
