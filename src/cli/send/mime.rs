//! A small MIME writer for `smarthost send`: RFC 5322 header fields, RFC 2047 encoded words for
//! non-ASCII text in headers, RFC 2231 parameter values for non-ASCII file names, quoted-printable
//! text bodies and base64 attachments. Output: CRLF line endings, 7-bit clean (only addresses may
//! carry UTF-8, which then needs SMTPUTF8), no line longer than 998 octets.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// An address with an optional display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: String,
}

impl Mailbox {
    /// `user@example.com`, `<user@example.com>` or `Display Name <user@example.com>`.
    pub fn parse(text: &str) -> Result<Mailbox, String> {
        let text = text.trim();
        let (name, address) = match (text.rfind('<'), text.ends_with('>')) {
            (Some(open), true) => {
                let name = text[..open].trim().trim_matches('"').trim();
                let name = (!name.is_empty()).then(|| name.to_string());
                (name, text[open + 1..text.len() - 1].trim())
            }
            _ => (None, text),
        };
        let valid = address
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
            && !address
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ','));
        if !valid {
            return Err(format!("`{text}` is not an e-mail address"));
        }
        if name
            .as_deref()
            .is_some_and(|n| n.chars().any(|c| c.is_control()))
        {
            return Err(format!("`{text}`: the display name has control characters"));
        }
        Ok(Mailbox {
            name,
            address: address.to_string(),
        })
    }

    fn header_text(&self) -> String {
        match &self.name {
            None => format!("<{}>", self.address),
            Some(name) => format!("{} <{}>", phrase(name), self.address),
        }
    }
}

/// A file to attach.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

/// What the message says; [`build`] writes it.
#[derive(Debug, Clone)]
pub struct Message {
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub subject: String,
    pub body: String,
    /// The body is HTML.
    pub html: bool,
    pub attachments: Vec<Attachment>,
    /// RFC 5322 date-time.
    pub date: String,
    /// With its angle brackets.
    pub message_id: String,
    /// The multipart boundary; must not occur in the content (random in practice).
    pub boundary: String,
}

/// The whole message, ready for DATA. `Bcc` is never written: those recipients are only in the
/// envelope.
pub fn build(msg: &Message) -> Vec<u8> {
    let mut out = String::new();
    header(&mut out, "From", &msg.from.header_text());
    if !msg.to.is_empty() {
        address_list(&mut out, "To", &msg.to);
    }
    if !msg.cc.is_empty() {
        address_list(&mut out, "Cc", &msg.cc);
    }
    header(
        &mut out,
        "Subject",
        &encode_text(&one_line(&msg.subject), 9),
    );
    header(&mut out, "Date", &msg.date);
    header(&mut out, "Message-ID", &msg.message_id);
    header(&mut out, "MIME-Version", "1.0");
    let subtype = if msg.html { "html" } else { "plain" };
    let (encoding, body) = encode_body(&msg.body);
    if msg.attachments.is_empty() {
        header(
            &mut out,
            "Content-Type",
            &format!("text/{subtype}; charset=utf-8"),
        );
        header(&mut out, "Content-Transfer-Encoding", encoding);
        out.push_str("\r\n");
        out.push_str(&body);
        return out.into_bytes();
    }
    let boundary = &msg.boundary;
    header(
        &mut out,
        "Content-Type",
        &format!("multipart/mixed;\r\n\tboundary=\"{boundary}\""),
    );
    out.push_str("\r\nThis is a multi-part message in MIME format.\r\n");
    out.push_str(&format!("\r\n--{boundary}\r\n"));
    header(
        &mut out,
        "Content-Type",
        &format!("text/{subtype}; charset=utf-8"),
    );
    header(&mut out, "Content-Transfer-Encoding", encoding);
    out.push_str("\r\n");
    out.push_str(&body);
    for attachment in &msg.attachments {
        out.push_str(&format!("\r\n--{boundary}\r\n"));
        let (name_param, filename_param) = filename_params(&attachment.filename);
        out.push_str(&format!(
            "Content-Type: {};\r\n\t{name_param}\r\n",
            attachment.content_type
        ));
        out.push_str(&format!(
            "Content-Disposition: attachment;\r\n\t{filename_param}\r\n"
        ));
        header(&mut out, "Content-Transfer-Encoding", "base64");
        out.push_str("\r\n");
        out.push_str(&base64_lines(&attachment.data));
    }
    out.push_str(&format!("\r\n--{boundary}--\r\n"));
    out.into_bytes()
}

fn header(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push_str("\r\n");
}

/// `To: a, b, ...`, folded before an address that would make the line longer than 78.
fn address_list(out: &mut String, name: &str, list: &[Mailbox]) {
    let mut line_len = name.len() + 2;
    out.push_str(name);
    out.push_str(": ");
    for (i, mailbox) in list.iter().enumerate() {
        let text = mailbox.header_text();
        if i > 0 {
            out.push(',');
            line_len += 1;
            if line_len + 1 + text.len() > 78 {
                out.push_str("\r\n ");
                line_len = 1;
            } else {
                out.push(' ');
                line_len += 1;
            }
        }
        out.push_str(&text);
        line_len += text.len();
    }
    out.push_str("\r\n");
}

fn one_line(text: &str) -> String {
    text.replace("\r\n", " ").replace(['\r', '\n'], " ")
}

/// A display name: as it is when it is plain words, quoted when it has specials, encoded words
/// when it is not ASCII.
fn phrase(name: &str) -> String {
    let name = one_line(name);
    if !name.is_ascii() || name.contains("=?") {
        return encode_words(&name);
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~ ".contains(c);
    if name.chars().all(atext) {
        name
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Unstructured header text: as it is when ASCII (folded at spaces when long), else RFC 2047.
/// `used` is how much of the first line the field name takes.
fn encode_text(text: &str, used: usize) -> String {
    if text.is_ascii() && !text.contains("=?") {
        return fold_words(text, used);
    }
    encode_words(text)
}

/// Folds at spaces so that lines stay near 78 characters (a word longer than that stays whole).
fn fold_words(text: &str, used: usize) -> String {
    let mut out = String::new();
    let mut line_len = used;
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            if line_len + 1 + word.len() > 78 && line_len > 1 {
                out.push_str("\r\n ");
                line_len = 1;
            } else {
                out.push(' ');
                line_len += 1;
            }
        }
        out.push_str(word);
        line_len += word.len();
    }
    out
}

/// RFC 2047 `B` encoded words of UTF-8, each at most 75 characters, on folded lines; characters
/// are never split between words.
fn encode_words(text: &str) -> String {
    const MAX_BYTES: usize = 45; // 60 base64 characters + 12 of `=?utf-8?B??=`
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > MAX_BYTES {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() || words.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| format!("=?utf-8?B?{}?=", BASE64.encode(w.as_bytes())))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// `name=...` for Content-Type and `filename=...` for Content-Disposition: a quoted string when
/// the name is ASCII; otherwise an RFC 2231 extended value (`filename*=utf-8''...`) and, for
/// mail programs that know only RFC 2047 there, an encoded word in `name`.
fn filename_params(filename: &str) -> (String, String) {
    let filename = one_line(filename);
    if filename.is_ascii() {
        let quoted = format!(
            "\"{}\"",
            filename.replace('\\', "\\\\").replace('"', "\\\"")
        );
        return (format!("name={quoted}"), format!("filename={quoted}"));
    }
    let mut extended = String::from("utf-8''");
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            extended.push(byte as char);
        } else {
            extended.push_str(&format!("%{byte:02X}"));
        }
    }
    let words = encode_words(&filename).replace("\r\n ", " ");
    (format!("name=\"{words}\""), format!("filename*={extended}"))
}

/// `7bit` for short-lined ASCII, else quoted-printable; the text with CRLF line ends.
fn encode_body(body: &str) -> (&'static str, String) {
    let normalized = body.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<&str> = normalized.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let plain = normalized.is_ascii()
        && lines.iter().all(|l| {
            l.len() <= 76
                && !l.ends_with([' ', '\t'])
                && l.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        });
    let mut out = String::new();
    for line in &lines {
        if plain {
            out.push_str(line);
        } else {
            quoted_printable_line(&mut out, line.as_bytes());
        }
        out.push_str("\r\n");
    }
    (if plain { "7bit" } else { "quoted-printable" }, out)
}

/// One line of quoted-printable (RFC 2045 §6.7) with soft line breaks, lines at most 76.
fn quoted_printable_line(out: &mut String, line: &[u8]) {
    let mut len = 0;
    for (i, &byte) in line.iter().enumerate() {
        let last = i + 1 == line.len();
        let literal = (byte == b' ' || byte == b'\t') && !last
            || (b'!'..=b'~').contains(&byte) && byte != b'=';
        let piece = if literal {
            (byte as char).to_string()
        } else {
            format!("={byte:02X}")
        };
        // Room for the piece and, unless it ends the line, a soft break's `=`.
        let room = if last { 76 } else { 75 };
        if len + piece.len() > room {
            out.push_str("=\r\n");
            len = 0;
        }
        out.push_str(&piece);
        len += piece.len();
    }
}

fn base64_lines(data: &[u8]) -> String {
    let encoded = BASE64.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// The content type for a file name's extension (common types only).
pub fn content_type_for(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "htm" | "html" => "text/html",
        "xml" => "application/xml",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "7z" => "application/x-7z-compressed",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "ics" => "text/calendar",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            from: Mailbox::parse("Scanner <scan@contoso.com>").unwrap(),
            to: vec![Mailbox::parse("boss@contoso.com").unwrap()],
            cc: vec![],
            subject: "Grüße aus Köln".into(),
            body: "Hallo Welt, schöne Grüße\n".into(),
            html: false,
            attachments: vec![],
            date: "Sun, 29 Nov 2026 06:00:00 +0000".into(),
            message_id: "<1@host>".into(),
            boundary: "=_b".into(),
        }
    }

    #[test]
    fn mailbox_forms() {
        assert_eq!(
            Mailbox::parse(" \"Doe, John\" <j@x.com>").unwrap(),
            Mailbox {
                name: Some("Doe, John".into()),
                address: "j@x.com".into()
            }
        );
        assert_eq!(Mailbox::parse("<j@x.com>").unwrap().name, None);
        assert!(Mailbox::parse("nobody").is_err());
        assert!(Mailbox::parse("a b@x.com").is_err());
        assert_eq!(phrase("Doe, John"), "\"Doe, John\"");
        assert_eq!(phrase("John Doe"), "John Doe");
    }

    #[test]
    fn non_ascii_subject_is_encoded_and_lines_are_short() {
        let text = String::from_utf8(build(&sample())).unwrap();
        assert!(text.contains("Subject: =?utf-8?B?"), "{text}");
        assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        assert!(text.contains("sch=C3=B6ne"), "{text}");
        assert!(text.is_ascii());
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']));
        let long = "ü".repeat(100);
        let words = encode_words(&long);
        assert!(words.split("\r\n ").all(|w| w.len() <= 75), "{words}");
    }

    #[test]
    fn quoted_printable_soft_breaks_and_trailing_space() {
        let mut out = String::new();
        quoted_printable_line(&mut out, "é".repeat(40).as_bytes());
        assert!(out.split("\r\n").all(|l| l.len() <= 76), "{out}");
        for line in out.split("\r\n") {
            let escapes_whole = line
                .trim_end_matches('=')
                .rsplit('=')
                .next()
                .is_some_and(|tail| tail.len() == 2);
            assert!(escapes_whole, "an escape is never cut: {out}");
        }
        let mut out = String::new();
        quoted_printable_line(&mut out, b"a=b ");
        assert_eq!(out, "a=3Db=20");
    }

    #[test]
    fn attachments_make_multipart_with_rfc2231_names() {
        let mut msg = sample();
        msg.attachments.push(Attachment {
            filename: "Bericht März.pdf".into(),
            content_type: content_type_for("Bericht März.pdf").into(),
            data: vec![0, 1, 2, 255],
        });
        let text = String::from_utf8(build(&msg)).unwrap();
        assert!(text.contains("multipart/mixed;\r\n\tboundary=\"=_b\""));
        assert!(
            text.contains("filename*=utf-8''Bericht%20M%C3%A4rz.pdf"),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/pdf;"));
        assert!(text.contains("AAEC/w==\r\n"));
        assert!(text.ends_with("\r\n--=_b--\r\n"));
    }
}
