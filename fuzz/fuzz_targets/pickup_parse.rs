//! The Pickup file parser (`pickup::parse_pickup`) and its address-list parser. Invariants (module
//! docs of `pickup/parse.rs`): never panics; queued content is CRLF text ending in CRLF, without NUL
//! and without a `Bcc:` field in its header section; the envelope has a sender (empty or a valid
//! mailbox) and at least one recipient, each a valid mailbox, none twice (ignoring case); parsing
//! the queued content again gives the same content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::pickup::{parse_address_list, parse_pickup};
use smarthost::smtp::command::is_valid_mailbox;

fn assert_crlf_text(content: &[u8]) {
    for (i, &b) in content.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(content.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && content[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    assert!(
        content.is_empty() || content.ends_with(b"\r\n"),
        "no final CRLF"
    );
}

/// The header fields of CRLF content, up to the first empty line: their names.
fn header_names(content: &[u8]) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    for line in content.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            names.push(line[..colon].trim_ascii().to_ascii_lowercase());
        }
    }
    names
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(addresses) = parse_address_list(text)
    {
        for address in &addresses {
            assert!(!address.is_empty(), "empty address from {text:?}");
        }
    }

    match parse_pickup(bytes) {
        Ok(message) => {
            assert_crlf_text(&message.content);
            assert!(!message.content.contains(&0), "NUL in content");
            assert!(
                !header_names(&message.content).iter().any(|n| n == b"bcc"),
                "Bcc kept in the content"
            );
            assert!(
                message.sender.is_empty() || is_valid_mailbox(&message.sender),
                "{:?}",
                message.sender
            );
            assert!(!message.recipients.is_empty());
            for (i, r) in message.recipients.iter().enumerate() {
                assert!(is_valid_mailbox(r), "invalid recipient {r:?}");
                assert!(
                    !message.recipients[..i]
                        .iter()
                        .any(|o| o.eq_ignore_ascii_case(r)),
                    "duplicate recipient {r:?}"
                );
            }
            // The queued content is a fixed point: read again, it is queued unchanged (unless,
            // once `Bcc:` is gone, it starts with a field named like an envelope line).
            let starts_like_envelope = header_names(&message.content)
                .first()
                .is_some_and(|n| n == b"x-sender" || n == b"x-receiver");
            if !starts_like_envelope && let Ok(again) = parse_pickup(&message.content) {
                assert_eq!(again.content, message.content, "content not stable");
            }
            let mut added = message.clone();
            added.add_missing_headers("Sun, 29 Nov 2026 08:00:00 +0000", "<1.fuzz@example>");
            assert!(added.has_date && added.has_message_id);
            assert!(added.content.ends_with(&message.content));
        }
        Err(rejected) => {
            assert!(!rejected.reason.is_empty());
            if let Some(content) = &rejected.content {
                assert_crlf_text(content);
            }
            for r in &rejected.recipients {
                assert!(is_valid_mailbox(r), "invalid recipient {r:?}");
            }
        }
    }
});
