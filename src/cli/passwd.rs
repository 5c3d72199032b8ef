//! `smarthost passwd`: hashes a password for a `[[user]]` of inbound AUTH and prints the line to put
//! in `password_hash` (argon2id, random salt; [`crate::policy::users::hash_password`]).
//!
//! From a terminal the password is read twice without echo (the prompts go to the terminal, so
//! stdout carries only the hash). Otherwise the first line of stdin is the password, for scripts:
//! only its line ending is removed, spaces are part of the password, and nothing after the first
//! line is read.

use anyhow::{Context, bail};
use std::io::{BufRead, IsTerminal};

pub fn run() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        from_terminal()?
    } else {
        first_line(stdin.lock())?
    };
    let hash = crate::policy::users::hash_password(&password)?;
    println!("{hash}");
    Ok(())
}

fn from_terminal() -> anyhow::Result<String> {
    let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
    if first.is_empty() {
        bail!("the password is empty");
    }
    let again =
        rpassword::prompt_password("Password (again): ").context("cannot read the password")?;
    if first != again {
        bail!("the two passwords differ; nothing was printed");
    }
    Ok(first)
}

/// The first line of `input` without its line ending (`\n` or `\r\n`).
pub fn first_line(mut input: impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input.read_line(&mut line).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            anyhow::anyhow!("cannot read the password from stdin: it is not UTF-8 text")
        } else {
            anyhow::anyhow!("cannot read the password from stdin: {e}")
        }
    })?;
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        bail!("the password is empty (give it as the first line of stdin)");
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_is_the_password() {
        let cases: [(&[u8], Result<&str, &str>); 8] = [
            (b"pa55 word\n", Ok("pa55 word")),
            (b"pa55 word\r\n", Ok("pa55 word")),
            (b"pa55 word", Ok("pa55 word")),
            (b" spaced \nsecond line\n", Ok(" spaced ")),
            (b"p\xc3\xa4ss\n", Ok("päss")),
            (b"\n", Err("the password is empty")),
            (b"", Err("the password is empty")),
            (b"\xff\xfe\n", Err("not UTF-8")),
        ];
        for (input, expected) in cases {
            match (first_line(input), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e}"),
                (got, _) => panic!("{input:?}: {got:?}"),
            }
        }
    }
}
