//! The SMTP command-line parser (`smtp::command::parse_command`), with the invariants of its module
//! docs: it never panics; an error is a reply with an enhanced status code that fits on one line;
//! only the first line counts; addresses are free of control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::smtp::Reply;
use smarthost::smtp::command::{Command, MAX_COMMAND_LINE, parse_command};

fuzz_target!(|line: &[u8]| {
    let result = parse_command(line);
    match &result {
        Ok(command) => check_command(command),
        Err(reply) => check_reply(reply),
    }
    // Only the first line counts: bytes after the first LF change nothing.
    if line.len() <= MAX_COMMAND_LINE
        && let Some(lf) = line.iter().position(|&b| b == b'\n')
    {
        assert_eq!(
            parse_command(&line[..=lf]),
            result,
            "bytes after the first LF changed the result"
        );
    }
});

fn check_reply(reply: &Reply) {
    assert!(
        reply.is_permanent(),
        "a refused command gets a 5xx: {reply:?}"
    );
    assert!(reply.enhanced().is_some(), "no enhanced code: {reply:?}");
    let wire = reply.to_wire();
    assert_eq!(
        wire.matches("\r\n").count(),
        1,
        "reply is not one line: {wire:?}"
    );
    assert_eq!(
        wire.matches(['\r', '\n']).count(),
        2,
        "bare CR/LF in reply: {wire:?}"
    );
}

fn no_controls(what: &str, text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control()),
        "control character in {what}: {text:?}"
    );
}

fn check_command(command: &Command) {
    match command {
        Command::Ehlo(host) | Command::Helo(host) => {
            no_controls("greeting host", host);
            assert!(!host.contains(char::REPLACEMENT_CHARACTER));
        }
        Command::Mail(mail) => no_controls("reverse path", &mail.address),
        Command::Rcpt(rcpt) => {
            assert!(!rcpt.address.is_empty(), "RCPT with the null path");
            no_controls("forward path", &rcpt.address);
        }
        Command::Auth {
            mechanism,
            initial_response: _,
        } => {
            assert!(
                (1..=20).contains(&mechanism.len()),
                "mechanism {mechanism:?}"
            );
            assert!(
                mechanism.bytes().all(|b| b.is_ascii_uppercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'_'),
                "mechanism {mechanism:?}"
            );
        }
        _ => {}
    }
}
