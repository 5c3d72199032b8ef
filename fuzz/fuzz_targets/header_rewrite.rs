//! Header rewriting before delivery: sender rewriting (`deliver::rewrite::rewrite_sender`) and the
//! Graph recipient fields (`deliver::graph::restrict_to_envelope`). Invariants: never panics; only
//! the header section changes (everything from the first empty line on is byte-identical); the null
//! sender stays null; a rewritten message passes the same rule unchanged (rewriting is idempotent),
//! and so does a restricted message.
//!
//! Input: the envelope sender on the first line, the allowed senders (comma-separated) on the
//! second, the envelope recipients for Graph (comma-separated) on the third, then the message. The
//! rule's address is `relay@contoso.com`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::config::SenderRewrite;
use smarthost::deliver::graph::restrict_to_envelope;
use smarthost::deliver::rewrite::rewrite_sender;

/// The first line of `bytes` (without its LF) and the rest.
fn line(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(&bytes[..end])
        .trim_end_matches('\r')
        .to_string();
    (text, bytes.get(end + 1..).unwrap_or_default())
}

/// Everything from the first empty line on (the body and the line before it).
fn from_first_empty_line(content: &[u8]) -> &[u8] {
    let mut pos = 0;
    while pos < content.len() {
        let end = content[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(content.len(), |i| pos + i + 1);
        let line = &content[pos..end];
        if line == b"\r\n" || line == b"\n" {
            return &content[pos..];
        }
        pos = end;
    }
    &[]
}

fuzz_target!(|bytes: &[u8]| {
    let (sender, rest) = line(bytes);
    let (allowed, rest) = line(rest);
    let (recipients, content) = line(rest);
    let list = |text: &str| -> Vec<String> {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let body = from_first_empty_line(content);

    let rule = SenderRewrite {
        address: "relay@contoso.com".to_string(),
        allowed_senders: list(&allowed.to_ascii_lowercase()),
    };
    if let Some((new_sender, out)) = rewrite_sender(content, &sender, &rule) {
        if sender.is_empty() {
            assert!(new_sender.is_empty(), "the null sender was replaced");
        } else {
            assert!(
                new_sender == sender || new_sender == rule.address,
                "{new_sender:?}"
            );
        }
        assert!(out.ends_with(body), "the body changed");
        // The result passes the same rule: nothing left to rewrite.
        if let Some((again_sender, again)) = rewrite_sender(&out, &new_sender, &rule) {
            panic!(
                "rewriting is not idempotent:\nfirst:  {:?}\nsecond: {:?} {:?}",
                String::from_utf8_lossy(&out),
                again_sender,
                String::from_utf8_lossy(&again)
            );
        }
    }

    let recipients = list(&recipients);
    let restricted = restrict_to_envelope(content, &recipients);
    assert!(restricted.ends_with(body), "the body changed");
    let again = restrict_to_envelope(&restricted, &recipients);
    assert_eq!(
        String::from_utf8_lossy(&again),
        String::from_utf8_lossy(&restricted),
        "restricting is not idempotent"
    );
});
