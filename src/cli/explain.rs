//! `smarthost explain "<reply>"`: what an upstream reply means and what to do about it, from the same
//! table the relay uses when it logs and bounces (`deliver::classify`), and whether the relay treats it
//! as temporary or permanent. A reply the table does not know is explained by its codes: the basic
//! code (RFC 5321) and the enhanced status code (RFC 3463).
//!
//! The text may be a whole reply (`550 5.7.30 Basic authentication ...`), a multi-line one as
//! logged (`550-5.7.1 ...` lines), a quote from a bounce (`Remote server returned '550 5.7.708
//! ...'`) or only a status code (`5.7.30`).

use crate::deliver::classify::{Class, classify_reply, explain};
use crate::smtp::Reply;
use crate::smtp::reply::EnhancedCode;

/// What `explain` found: the text to print and whether the reply is a known one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub text: String,
    /// The classification table knows this reply (exit status 0).
    pub known: bool,
}

/// Prints the explanation of `input`; returns whether the reply is a known one.
pub fn run(input: &str) -> bool {
    let explanation = explain_reply(input);
    print!("{}", explanation.text);
    explanation.known
}

/// The explanation of `input`, as printed.
pub fn explain_reply(input: &str) -> Explanation {
    let parsed = parse(input);
    let mut out = String::new();
    let (reply, code_given) = match (parsed.code, parsed.enhanced) {
        (Some(code), _) => (Reply::new(code, parsed.text.clone()), true),
        // Without a basic code, the enhanced code's class stands for it.
        (None, Some(enhanced)) => (
            Reply::new(u16::from(enhanced.class) * 100 + 50, parsed.text.clone()),
            false,
        ),
        (None, None) => {
            let reply = Reply::new(550, parsed.text.clone());
            return match explain(&reply) {
                Some(meaning) => {
                    out.push_str(&format!("Reply:    {}\n", parsed.text));
                    out.push_str(&format!("Meaning:  {meaning}\n"));
                    out.push_str(
                        "Class:    not known without the reply code (4xx: temporary, 5xx: \
                         permanent)\n",
                    );
                    Explanation {
                        text: out,
                        known: true,
                    }
                }
                None => Explanation {
                    text: format!(
                        "No reply code found in {:?}: give the reply as the server sent it, e.g. \
                         \"550 5.7.30 Basic authentication is not supported\", or its status \
                         code, e.g. \"5.7.30\".\n",
                        input.trim()
                    ),
                    known: false,
                },
            };
        }
    };

    let shown = if code_given {
        format!("{} {}", reply.code, parsed.text)
    } else {
        parsed.text.clone()
    };
    out.push_str(&format!("Reply:    {}\n", shown.trim_end()));
    let known = explain(&reply);
    match known {
        Some(meaning) => out.push_str(&format!("Meaning:  {meaning}\n")),
        None => out.push_str(
            "Meaning:  not a reply smarthost knows from Microsoft 365; what its codes say:\n",
        ),
    }
    if !reply.is_positive() && !reply.is_intermediate() {
        out.push_str(&format!("Class:    {}\n", class_text(&reply)));
    }
    if code_given {
        out.push_str(&format!("Code:     {}\n", basic_code_meaning(reply.code)));
    }
    if let Some(enhanced) = parsed.enhanced {
        // A known reply's meaning is above; Microsoft gives some details meanings of its own
        // (5.7.30 is REQUIRETLS in the registry), so only class and subject are repeated.
        out.push_str(&format!(
            "Status:   {}\n",
            enhanced_meaning(enhanced, known.is_none())
        ));
    }
    Explanation {
        text: out,
        known: known.is_some(),
    }
}

fn class_text(reply: &Reply) -> String {
    match classify_reply(reply) {
        Class::Transient if reply.is_permanent() && reply.code < 600 => {
            "temporary, although the code is 5xx: the reply concerns the relay (its credentials, \
             connector, IP address or quota), not the message, so smarthost keeps the message and \
             tries again after the fix"
                .to_string()
        }
        Class::Transient => {
            "temporary: smarthost keeps the message and tries again on the retry schedule"
                .to_string()
        }
        Class::Permanent => {
            "permanent: smarthost gives up on the recipient and sends the sender a non-delivery \
             report (as a reply to EHLO, STARTTLS or AUTH it is treated as temporary: it is about \
             the connection, not the message)"
                .to_string()
        }
    }
}

/// What the input holds: the basic code (when written), the enhanced code (when written) and the
/// reply text from the enhanced code on (or after the basic code).
struct Parsed {
    code: Option<u16>,
    enhanced: Option<EnhancedCode>,
    text: String,
}

fn parse(input: &str) -> Parsed {
    // A multi-line reply as logged: `550-first line` ... `550 last line`; the code is said once.
    let mut code = None;
    let mut lines = Vec::new();
    for line in input.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match split_code(line) {
            Some((c, rest)) if code.is_none_or(|first| first == c) => {
                code = Some(c);
                lines.push(rest.trim());
            }
            _ => lines.push(line),
        }
    }
    let joined = lines.join(" ");
    let words: Vec<&str> = joined.split_whitespace().collect();
    let enhanced_at = words
        .iter()
        .position(|w| parse_enhanced(clean(w)).is_some());
    let enhanced = enhanced_at.and_then(|i| parse_enhanced(clean(words[i])));
    // Inside quoted text (`Remote server returned '550 5.7.708 ...'`) the code is the word
    // before the enhanced code, or the first code-looking word.
    if code.is_none() {
        let before = enhanced_at
            .and_then(|i| i.checked_sub(1))
            .map(|i| clean(words[i]));
        code = before
            .and_then(parse_basic)
            .or_else(|| words.iter().find_map(|w| parse_basic(clean(w))));
    }
    let text = match enhanced_at {
        Some(i) => {
            let mut text = clean(words[i]).to_string();
            for word in &words[i + 1..] {
                text.push(' ');
                text.push_str(word);
            }
            text.trim_end_matches(['\'', '"']).to_string()
        }
        None => {
            let start = words
                .iter()
                .position(|w| code.is_some_and(|c| parse_basic(clean(w)) == Some(c)))
                .map_or(0, |i| i + 1);
            words[start.min(words.len())..].join(" ")
        }
    };
    Parsed {
        code,
        enhanced,
        text,
    }
}

/// A word without the quotes and punctuation around it in quoted replies.
fn clean(word: &str) -> &str {
    word.trim_matches(|c: char| matches!(c, '\'' | '"' | '(' | ')' | '[' | ']' | ';' | ',' | ':'))
}

/// `550 text`, `550-text` or `550` alone.
fn split_code(line: &str) -> Option<(u16, &str)> {
    let digits = line.get(..3)?;
    let code = parse_basic(digits)?;
    match line.as_bytes().get(3) {
        None => Some((code, "")),
        Some(b' ' | b'-') => Some((code, &line[4..])),
        Some(_) => None,
    }
}

fn parse_basic(word: &str) -> Option<u16> {
    let valid = word.len() == 3
        && word.bytes().all(|b| b.is_ascii_digit())
        && matches!(word.as_bytes()[0], b'2'..=b'5');
    valid.then(|| word.parse().ok()).flatten()
}

fn parse_enhanced(word: &str) -> Option<EnhancedCode> {
    let mut parts = word.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    if parts.next().is_some()
        || !matches!(class, 2 | 4 | 5)
        || subject.is_empty()
        || detail.is_empty()
        || subject.len() > 3
        || detail.len() > 3
    {
        return None;
    }
    Some(EnhancedCode {
        class,
        subject: subject.parse().ok()?,
        detail: detail.parse().ok()?,
    })
}

/// RFC 5321 (and RFC 4954 for authentication) on the basic reply codes.
fn basic_code_meaning(code: u16) -> String {
    let specific = match code {
        220 => "service ready",
        221 => "closing the connection",
        235 => "authentication succeeded",
        250 => "requested action completed",
        251 => "user not local; will forward",
        252 => "cannot verify the user, but will accept the message",
        334 => "authentication continues (server challenge)",
        354 => "start mail input",
        421 => "service not available, closing the connection",
        432 => {
            "a password transition is needed (RFC 4954); Microsoft 365 also uses it for too many concurrent connections"
        }
        450 => "mailbox unavailable (busy or temporarily blocked)",
        451 => "local error in processing",
        452 => "insufficient system storage, or too many recipients",
        454 => "temporary authentication failure, or TLS not available",
        455 => "server unable to accommodate parameters",
        500 => "syntax error, command unrecognised (or a line too long)",
        501 => "syntax error in parameters or arguments",
        502 => "command not implemented",
        503 => "bad sequence of commands",
        504 => "command parameter not implemented",
        530 => "authentication required",
        534 => "authentication mechanism is too weak",
        535 => "authentication credentials invalid",
        538 => "encryption required for the requested authentication mechanism",
        550 => "mailbox unavailable: not found, no access, or refused by policy",
        551 => "user not local",
        552 => "exceeded storage allocation (or message too large)",
        553 => "mailbox name not allowed (bad address syntax)",
        554 => "transaction failed (or no SMTP service here)",
        555 => "MAIL FROM/RCPT TO parameters not recognised or not implemented",
        _ => "",
    };
    let class = match code / 100 {
        2 => "success (2xx)",
        3 => "intermediate (3xx): the server waits for more",
        4 => "temporary failure (4xx): the same request may succeed later",
        5 => "permanent failure (5xx): the same request will fail again",
        _ => "not a valid SMTP reply code",
    };
    if specific.is_empty() {
        format!("{code}: {class}")
    } else {
        format!("{code}: {specific}; {class}")
    }
}

/// RFC 3463 (with the later additions of RFC 4954, 5248, 6531, 7372 and 7505) on the enhanced
/// status codes.
fn enhanced_meaning(code: EnhancedCode, with_detail: bool) -> String {
    let class = match code.class {
        2 => "success",
        4 => "persistent transient failure",
        _ => "permanent failure",
    };
    let subject = match code.subject {
        0 => "other or undefined status",
        1 => "addressing status",
        2 => "mailbox status",
        3 => "mail system status",
        4 => "network and routing status",
        5 => "mail delivery protocol status",
        6 => "message content or media status",
        7 => "security or policy status",
        _ => "a subject RFC 3463 does not define",
    };
    let detail = match (code.subject, code.detail) {
        (0, 0) => Some("other undefined status"),
        (1, 0) => Some("other address status"),
        (1, 1) => Some(
            "bad destination mailbox address: the mailbox does not exist; check the recipient's address",
        ),
        (1, 2) => Some(
            "bad destination system address: the recipient's domain does not exist or accepts no mail",
        ),
        (1, 3) => Some("bad destination mailbox address syntax"),
        (1, 4) => Some("destination mailbox address ambiguous"),
        (1, 5) => Some("destination address valid"),
        (1, 6) => Some("destination mailbox has moved, no forwarding address"),
        (1, 7) => Some("bad sender's mailbox address syntax"),
        (1, 8) => Some("bad sender's system address"),
        (1, 10) => Some("the recipient's domain has a null MX: it accepts no mail"),
        (2, 0) => Some("other or undefined mailbox status"),
        (2, 1) => Some("mailbox disabled, not accepting messages"),
        (2, 2) => Some("mailbox full"),
        (2, 3) => Some("message length exceeds an administrative limit"),
        (2, 4) => Some("mailing list expansion problem"),
        (3, 0) => Some("other or undefined mail system status"),
        (3, 1) => Some("mail system full"),
        (3, 2) => Some("system not accepting network messages"),
        (3, 3) => Some("system not capable of the selected features"),
        (3, 4) => Some("message too big for the system"),
        (3, 5) => Some("system incorrectly configured"),
        (4, 0) => Some("other or undefined network or routing status"),
        (4, 1) => Some("no answer from host"),
        (4, 2) => Some("bad connection"),
        (4, 3) => Some("directory server failure (e.g. DNS)"),
        (4, 4) => Some("unable to route"),
        (4, 5) => Some("mail system congestion"),
        (4, 6) => Some("routing loop detected"),
        (4, 7) => Some("delivery time expired"),
        (5, 0) => Some("other or undefined protocol status"),
        (5, 1) => Some("invalid command"),
        (5, 2) => Some("syntax error"),
        (5, 3) => Some("too many recipients"),
        (5, 4) => Some("invalid command arguments"),
        (5, 5) => Some("wrong protocol version"),
        (5, 6) => Some("authentication exchange line too long"),
        (6, 0) => Some("other or undefined media error"),
        (6, 1) => Some("media not supported"),
        (6, 2) => Some("conversion required and prohibited"),
        (6, 3) => Some("conversion required but not supported"),
        (6, 4) => Some("conversion with loss performed"),
        (6, 5) => Some("conversion failed"),
        (6, 7) => Some("non-ASCII addresses not permitted (SMTPUTF8 needed)"),
        (6, 8) => Some("UTF-8 string reply required"),
        (6, 9) => Some("UTF-8 header message cannot be transferred"),
        (7, 0) => Some("other or undefined security status (also: authentication required)"),
        (7, 1) => {
            Some("delivery not authorized, message refused (relaying denied, or refused by policy)")
        }
        (7, 2) => Some("mailing list expansion prohibited"),
        (7, 3) => Some("security conversion required but not possible"),
        (7, 4) => Some("security features not supported"),
        (7, 5) => Some("cryptographic failure"),
        (7, 6) => Some("cryptographic algorithm not supported"),
        (7, 7) => Some("message integrity failure"),
        (7, 8) => Some("authentication credentials invalid"),
        (7, 9) => Some("authentication mechanism is too weak"),
        (7, 10) => Some("encryption needed"),
        (7, 11) => Some("encryption required for the requested authentication mechanism"),
        (7, 12) => Some("a password transition is needed"),
        (7, 13) => Some("user account disabled"),
        (7, 14) => Some("trust relationship required"),
        (7, 15) => Some("priority level is too low"),
        (7, 16) => Some("message is too big for the specified priority"),
        (7, 17) => Some("mailbox owner has changed"),
        (7, 18) => Some("domain owner has changed"),
        (7, 19) => Some("RRVS test cannot be completed"),
        (7, 20) => Some("no passing DKIM signature found"),
        (7, 21) => Some("no acceptable DKIM signature found"),
        (7, 22) => Some("no valid author-matched DKIM signature found"),
        (7, 23) => Some("SPF validation failed"),
        (7, 24) => Some("SPF validation error"),
        (7, 25) => Some("reverse DNS validation failed"),
        (7, 26) => Some("multiple authentication checks failed"),
        (7, 27) => Some("the sender's domain has a null MX"),
        (7, 28) => Some("mail flood detected"),
        (7, 29) => Some("ARC validation failure"),
        (7, 30) => Some("REQUIRETLS support required"),
        _ => None,
    };
    if !with_detail {
        return format!("{code} (RFC 3463): {class}; {subject}");
    }
    let detail = detail.map_or_else(
        || {
            format!(
                "detail {} is not in the RFCs: the server's own (Microsoft 365 numbers many of its \
                 replies this way)",
                code.detail
            )
        },
        str::to_string,
    );
    format!("{code} (RFC 3463): {class}; {subject}; {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, basic code, enhanced code, text).
    type ParseCase = (
        &'static str,
        Option<u16>,
        Option<(u8, u16, u16)>,
        &'static str,
    );

    #[test]
    fn replies_are_found_in_every_way_they_are_pasted() {
        let cases: &[ParseCase] = &[
            (
                "550 5.7.30 Basic authentication is not supported for Client Submission",
                Some(550),
                Some((5, 7, 30)),
                "5.7.30 Basic authentication is not supported for Client Submission",
            ),
            ("5.7.30", None, Some((5, 7, 30)), "5.7.30"),
            ("  550  ", Some(550), None, ""),
            (
                "550-5.7.1 Service unavailable;\n550 5.7.1 Client host [192.0.2.1] blocked using Spamhaus",
                Some(550),
                Some((5, 7, 1)),
                "5.7.1 Service unavailable; 5.7.1 Client host [192.0.2.1] blocked using Spamhaus",
            ),
            (
                "Remote server returned '550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.'",
                Some(550),
                Some((5, 7, 708)),
                "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
            ),
            (
                "SMTP error (432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded)",
                Some(432),
                Some((4, 3, 2)),
                "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded)",
            ),
            (
                "421 Too many connections",
                Some(421),
                None,
                "Too many connections",
            ),
            ("blocked using FBLW15", None, None, "blocked using FBLW15"),
            (
                "version 1.2.3 of something",
                None,
                None,
                "version 1.2.3 of something",
            ),
        ];
        for (input, code, enhanced, text) in cases {
            let parsed = parse(input);
            assert_eq!(parsed.code, *code, "{input}");
            assert_eq!(
                parsed.enhanced.map(|e| (e.class, e.subject, e.detail)),
                *enhanced,
                "{input}"
            );
            assert_eq!(parsed.text, *text, "{input}");
        }
    }

    #[test]
    fn known_replies_are_explained_with_their_class() {
        let cases = [
            (
                "550 5.7.30 Basic authentication is not supported for Client Submission",
                "OAuth 2.0",
                "temporary, although the code is 5xx",
            ),
            ("5.7.30", "OAuth 2.0", "temporary, although the code is 5xx"),
            (
                "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                "concurrent connections",
                "Class:    temporary: smarthost keeps the message",
            ),
            (
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                "rewrite the sender",
                "Class:    permanent",
            ),
            (
                "550 5.4.1 Recipient address rejected: Access denied",
                "does not exist",
                "Status:   5.4.1 (RFC 3463): permanent failure; network and routing status\n",
            ),
        ];
        for (input, meaning, also) in cases {
            let e = explain_reply(input);
            assert!(e.known, "{input}\n{}", e.text);
            assert!(e.text.contains(meaning), "{input}\n{}", e.text);
            assert!(e.text.contains(also), "{input}\n{}", e.text);
        }
        let e = explain_reply("blocked using FBLW15");
        assert!(e.known, "{}", e.text);
        assert!(
            e.text.contains("not known without the reply code"),
            "{}",
            e.text
        );
    }

    #[test]
    fn unknown_replies_are_explained_by_their_codes() {
        let e = explain_reply("550 5.1.1 User unknown");
        assert!(!e.known);
        assert!(e.text.contains("not a reply smarthost knows"), "{}", e.text);
        assert!(
            e.text.contains("Code:     550: mailbox unavailable"),
            "{}",
            e.text
        );
        assert!(
            e.text.contains("Status:   5.1.1 (RFC 3463): permanent failure; addressing status; bad destination mailbox address"),
            "{}",
            e.text
        );
        assert!(e.text.contains("Class:    permanent"), "{}", e.text);

        let e = explain_reply("4.4.1");
        assert!(!e.known);
        assert!(e.text.contains("no answer from host"), "{}", e.text);
        assert!(e.text.contains("Class:    temporary"), "{}", e.text);
        assert!(!e.text.contains("Code:"), "{}", e.text);

        let e = explain_reply("5.7.1");
        assert!(e.text.contains("delivery not authorized"), "{}", e.text);
        let e = explain_reply("550 5.7.999 Something new");
        assert!(
            e.text.contains("detail 999 is not in the RFCs"),
            "{}",
            e.text
        );
        let e = explain_reply("250 2.0.0 OK");
        assert!(!e.text.contains("Class:"), "{}", e.text);
        assert!(e.text.contains("success"), "{}", e.text);

        let e = explain_reply("something went wrong");
        assert!(!e.known);
        assert!(e.text.starts_with("No reply code found"), "{}", e.text);
    }
}
