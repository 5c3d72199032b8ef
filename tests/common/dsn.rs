//! Reading delivery status notifications back with a real MIME parser (mail-parser), field by field.

use mail_parser::{MessageParser, MimeHeaders};

/// A DSN as a test sees it.
#[derive(Debug)]
pub struct ParsedDsn {
    pub to: String,
    pub subject: String,
    pub auto_submitted: String,
    /// `multipart/report; report-type=delivery-status`
    pub report_type: String,
    pub readable: String,
    /// Per-message fields, then one map per recipient (field names lower-cased).
    pub per_message: Vec<(String, String)>,
    pub per_recipient: Vec<Vec<(String, String)>>,
    /// `message/rfc822` or `text/rfc822-headers`.
    pub original_type: String,
    pub original: Vec<u8>,
}

impl ParsedDsn {
    pub fn recipient_field(&self, index: usize, name: &str) -> Option<&str> {
        self.per_recipient
            .get(index)?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

/// Parses a stored DSN (as written to a drop folder, x-sender/x-receiver lines included).
pub fn parse(bytes: &[u8]) -> ParsedDsn {
    let message = MessageParser::default()
        .parse(bytes)
        .expect("the DSN parses as a message");
    let ct = message.content_type().expect("DSN has a Content-Type");
    let report_type = format!(
        "{}/{}; report-type={}",
        ct.ctype(),
        ct.subtype().unwrap_or(""),
        ct.attribute("report-type").unwrap_or("")
    );
    let mut readable = String::new();
    let mut status = String::new();
    let mut original_type = String::new();
    let mut original = Vec::new();
    for part in message.parts.iter().skip(1) {
        let Some(pct) = part.content_type() else {
            continue;
        };
        let kind = format!("{}/{}", pct.ctype(), pct.subtype().unwrap_or(""));
        match kind.as_str() {
            "text/plain" if readable.is_empty() => {
                readable = part.text_contents().unwrap_or_default().to_string()
            }
            "message/delivery-status" => {
                status = String::from_utf8_lossy(part.contents()).into_owned()
            }
            "message/rfc822" | "text/rfc822-headers" if original_type.is_empty() => {
                original_type = kind.clone();
                original = match part.message() {
                    Some(inner) => inner.raw_message().to_vec(),
                    None => part.contents().to_vec(),
                };
            }
            _ => {}
        }
    }
    let status = status.replace("\r\n", "\n");
    let mut blocks = status.split("\n\n").filter(|b| !b.trim().is_empty());
    let per_message = blocks.next().map(fields).unwrap_or_default();
    let per_recipient = blocks.map(fields).collect();
    ParsedDsn {
        to: message
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or("")
            .to_string(),
        subject: message.subject().unwrap_or("").to_string(),
        auto_submitted: message
            .header_raw("Auto-Submitted")
            .unwrap_or("")
            .trim()
            .to_string(),
        report_type,
        readable,
        per_message,
        per_recipient,
        original_type,
        original,
    }
}
