//! RFC 5322 address lists (§3.4, with the obsolete forms of §4.4) as they appear in the `From:`,
//! `Sender:`, `To:`, `Cc:` and `Bcc:` fields of a Pickup file. Only the addresses are wanted:
//! display names, comments and group names are read past, never interpreted.
//!
//! Accepted: `a@b`, `Name <a@b>`, `"Doe, John" <a@b>`, `a@b (comment)`, groups (`team: a@b, c@d;`,
//! `undisclosed-recipients:;`), encoded words in names (`=?utf-8?q?Doe,_J?= <a@b>`, even with the
//! specials RFC 2047 forbids there), obsolete routes (`<@relay:a@b>`), empty list elements, and a
//! `;` outside a group as a separator (the habit of Windows mail clients: `a@b; c@d`).
//! Refused, with a message that quotes the text: a name without angle brackets (`John a@b`), an
//! address without a domain, unclosed quotes, comments and brackets.

/// One lexical token of a header value, with its place in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token<'a> {
    kind: Kind<'a>,
    /// Byte range in the value, for messages that quote what was written.
    start: usize,
    end: usize,
    /// White space or a comment came before it.
    space_before: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    /// An atom, a quoted string (with its quotes) or an encoded word, as written.
    Word(&'a str),
    /// A domain literal, `[...]`, as written.
    Literal(&'a str),
    /// One of `< > , ; : @ .`
    Special(char),
}

const SPECIALS: &str = "()<>[]:;@\\,.\"";

fn tokenize(text: &str) -> Result<Vec<Token<'_>>, String> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut space = false;
    while i < bytes.len() {
        let start = i;
        let kind = match bytes[i] {
            b' ' | b'\t' | b'\r' | b'\n' => {
                space = true;
                i += 1;
                continue;
            }
            b'(' => {
                i = skip_comment(text, i)?;
                space = true;
                continue;
            }
            b'"' => {
                i = closing(text, i, b'"')
                    .ok_or_else(|| format!("`{}` has a quote that is not closed", text.trim()))?;
                Kind::Word(&text[start..i])
            }
            b'[' => {
                i = closing(text, i, b']')
                    .ok_or_else(|| format!("`{}` has a `[` that is not closed", text.trim()))?;
                Kind::Literal(&text[start..i])
            }
            c @ (b'<' | b'>' | b',' | b';' | b':' | b'@' | b'.') => {
                i += 1;
                Kind::Special(c as char)
            }
            c if c.is_ascii_control() => {
                return Err(format!(
                    "`{}` has a control character (byte {c:#04x})",
                    text.trim()
                ));
            }
            c @ (b')' | b']' | b'\\') => {
                return Err(format!(
                    "`{}` has a `{}` that belongs to nothing",
                    text.trim(),
                    c as char
                ));
            }
            _ => {
                i = match encoded_word_end(text, i) {
                    Some(end) => end,
                    None => atom_end(text, i),
                };
                Kind::Word(&text[start..i])
            }
        };
        tokens.push(Token {
            kind,
            start,
            end: i,
            space_before: space,
        });
        space = false;
    }
    Ok(tokens)
}

/// The end of the comment that opens at `at` (comments nest; `\` quotes the next character).
fn skip_comment(text: &str, at: usize) -> Result<usize, String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = at;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!(
        "`{}` has a comment `(` that is not closed",
        text.trim()
    ))
}

/// The end (exclusive) of a quoted string or domain literal that opens at `at`.
fn closing(text: &str, at: usize, close: u8) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b if b == close => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

fn atom_end(text: &str, at: usize) -> usize {
    text[at..]
        .find(|c: char| c.is_ascii_whitespace() || c.is_ascii_control() || SPECIALS.contains(c))
        .map_or(text.len(), |offset| at + offset)
}

/// `=?charset?B|Q?text?=` starting at `at`: taken whole, whatever specials the text holds.
fn encoded_word_end(text: &str, at: usize) -> Option<usize> {
    let rest = text[at..].strip_prefix("=?")?;
    let no_space = |s: &str| !s.is_empty() && !s.contains(|c: char| c.is_ascii_whitespace());
    let (charset, rest) = rest.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let (payload, _) = rest.split_once("?=")?;
    let valid = no_space(charset)
        && matches!(encoding, "B" | "b" | "Q" | "q")
        && !payload.contains(|c: char| c.is_ascii_whitespace());
    valid.then(|| at + 2 + charset.len() + 1 + encoding.len() + 1 + payload.len() + 2)
}

/// The addresses (`local@domain`, as written but without comments and folding white space) of an
/// address list. An empty list is not an error.
pub fn parse_address_list(text: &str) -> Result<Vec<String>, String> {
    let tokens = tokenize(text)?;
    let mut addresses = Vec::new();
    let mut in_group = false;
    let mut i = 0;
    while i < tokens.len() {
        // A phrase, or the start of a bare address: up to the next structural special.
        let mut j = i;
        while j < tokens.len() && !is_structural(tokens[j].kind) {
            j += 1;
        }
        match tokens.get(j).map(|t| t.kind) {
            Some(Kind::Special('<')) => {
                let close = tokens[j..]
                    .iter()
                    .position(|t| t.kind == Kind::Special('>'))
                    .map(|offset| j + offset)
                    .ok_or_else(|| {
                        format!(
                            "`{}` has a `<` that is not closed",
                            quote(text, &tokens[i..])
                        )
                    })?;
                let inner = strip_route(&tokens[j + 1..close]);
                if inner.iter().any(|t| t.kind == Kind::Special('<')) {
                    return Err(format!(
                        "`{}` has `<` inside `<...>`",
                        quote(text, &tokens[i..=close])
                    ));
                }
                if !inner.is_empty() {
                    addresses.push(addr_spec(text, inner)?);
                }
                i = close + 1;
                match tokens.get(i).map(|t| t.kind) {
                    None => {}
                    Some(Kind::Special(',')) => i += 1,
                    Some(Kind::Special(';')) => {
                        in_group = false;
                        i += 1;
                    }
                    Some(_) => {
                        let next = &tokens[i..];
                        let end = next
                            .iter()
                            .position(|t| matches!(t.kind, Kind::Special(',' | ';')))
                            .unwrap_or(next.len());
                        return Err(format!(
                            "`{}` follows an address in `<...>` without a comma",
                            quote(text, &next[..end])
                        ));
                    }
                }
            }
            Some(Kind::Special(':')) => {
                if in_group {
                    return Err(format!(
                        "`{}` opens a group inside a group",
                        quote(text, &tokens[i..=j])
                    ));
                }
                // The group's name is read past; its members follow.
                in_group = true;
                i = j + 1;
            }
            Some(Kind::Special('>')) => {
                return Err(format!(
                    "`{}` has a `>` without `<`",
                    quote(text, &tokens[i..=j])
                ));
            }
            separator => {
                if j > i {
                    addresses.push(addr_spec(text, &tokens[i..j])?);
                }
                if separator == Some(Kind::Special(';')) {
                    in_group = false;
                }
                i = j + 1;
            }
        }
    }
    Ok(addresses)
}

fn is_structural(kind: Kind<'_>) -> bool {
    matches!(kind, Kind::Special('<' | '>' | ',' | ';' | ':'))
}

/// Drops an obsolete source route: `<@a,@b:user@host>` is `user@host`.
fn strip_route<'t, 'a>(tokens: &'t [Token<'a>]) -> &'t [Token<'a>] {
    if tokens.first().map(|t| t.kind) == Some(Kind::Special('@'))
        && let Some(colon) = tokens.iter().position(|t| t.kind == Kind::Special(':'))
    {
        return &tokens[colon + 1..];
    }
    tokens
}

/// `local-part@domain` from its tokens (comments and folding white space already gone).
fn addr_spec(text: &str, tokens: &[Token<'_>]) -> Result<String, String> {
    let written = quote(text, tokens);
    let ats: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| t.kind == Kind::Special('@'))
        .map(|(at, _)| at)
        .collect();
    let at = match ats.as_slice() {
        [at] => *at,
        [] if two_words_in_a_row(tokens) => {
            return Err(format!(
                "`{written}` is not an address (a name is written with the address in angle \
                 brackets: `Name <user@example.com>`)"
            ));
        }
        [] => {
            return Err(format!(
                "`{written}` is not an address: it has no `@domain`"
            ));
        }
        _ => {
            return Err(format!(
                "`{written}` is not an address: it has more than one `@`"
            ));
        }
    };
    let (local, domain) = (&tokens[..at], &tokens[at + 1..]);
    let local = dotted(local, false).ok_or_else(|| {
        if two_words_in_a_row(local) {
            format!(
                "`{written}` is not an address (a name is written with the address in angle \
                 brackets: `Name <user@example.com>`)"
            )
        } else {
            format!("`{written}` is not an address: the part before `@` is not valid")
        }
    })?;
    let domain = match domain {
        [
            Token {
                kind: Kind::Literal(literal),
                ..
            },
        ] => literal.to_string(),
        _ => dotted(domain, true).ok_or_else(|| {
            format!("`{written}` is not an address: the part after `@` is not a domain")
        })?,
    };
    Ok(format!("{local}@{domain}"))
}

/// `John Doe john@x`: a name written without the angle brackets around the address.
fn two_words_in_a_row(tokens: &[Token<'_>]) -> bool {
    tokens
        .windows(2)
        .any(|pair| matches!((pair[0].kind, pair[1].kind), (Kind::Word(_), Kind::Word(_))))
}

/// `word *("." word)`; in a domain, quoted strings are not words.
fn dotted(tokens: &[Token<'_>], domain: bool) -> Option<String> {
    let mut out = String::new();
    let mut expect_word = true;
    for token in tokens {
        match token.kind {
            Kind::Word(word) if expect_word => {
                if domain && word.starts_with('"') {
                    return None;
                }
                out.push_str(word);
                expect_word = false;
            }
            Kind::Special('.') if !expect_word => {
                out.push('.');
                expect_word = true;
            }
            _ => return None,
        }
    }
    (!out.is_empty() && !expect_word).then_some(out)
}

/// The text the tokens were read from, for messages.
fn quote(text: &str, tokens: &[Token<'_>]) -> String {
    match (tokens.first(), tokens.last()) {
        (Some(first), Some(last)) => text[first.start..last.end].to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_yield_their_addresses() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   ", &[]),
            ("a@b.com", &["a@b.com"]),
            (
                " tbill@externaldomainname.com",
                &["tbill@externaldomainname.com"],
            ),
            ("<a@b.com>", &["a@b.com"]),
            ("John Doe <john@example.com>", &["john@example.com"]),
            (
                "\"Doe, John\" <john@example.com>, jane@example.com",
                &["john@example.com", "jane@example.com"],
            ),
            ("\"a@b\" <real@example.com>", &["real@example.com"]),
            ("\"quoted \\\" comma,\" <q@example.com>", &["q@example.com"]),
            ("john@example.com (John, Doe)", &["john@example.com"]),
            (
                "(first) john (middle) @ (x) example.com (last)",
                &["john@example.com"],
            ),
            (
                "John (nested (comment), yes) <j@example.com>",
                &["j@example.com"],
            ),
            ("john . doe @ example . com", &["john.doe@example.com"]),
            ("\"john doe\"@example.com", &["\"john doe\"@example.com"]),
            ("user@[10.0.0.5]", &["user@[10.0.0.5]"]),
            ("undisclosed-recipients:;", &[]),
            ("undisclosed-recipients: ;", &[]),
            (
                "Team: a@x.com, B <b@x.com>;, c@x.com",
                &["a@x.com", "b@x.com", "c@x.com"],
            ),
            ("Team: a@x.com", &["a@x.com"]),
            ("a@x.com; b@x.com", &["a@x.com", "b@x.com"]),
            ("a@x.com,, ,b@x.com,", &["a@x.com", "b@x.com"]),
            (
                "=?utf-8?Q?M=C3=BCller=2C_Hans?= <hans@example.com>",
                &["hans@example.com"],
            ),
            (
                "=?utf-8?q?Doe,_John?= <jd@example.com>, x@example.com",
                &["jd@example.com", "x@example.com"],
            ),
            (
                "=?UTF-8?B?SsO2cmc=?= <joerg@example.com>",
                &["joerg@example.com"],
            ),
            ("Jörg Müller <joerg@example.com>", &["joerg@example.com"]),
            ("jörg@exämple.com", &["jörg@exämple.com"]),
            (
                "A\r\n <a@example.com>,\r\n\tB <b@example.com>",
                &["a@example.com", "b@example.com"],
            ),
            (
                "<@relay.example.com,@other.example:a@example.com>",
                &["a@example.com"],
            ),
            ("O'Brien <o'brien@example.com>", &["o'brien@example.com"]),
            ("a+tag@example.com", &["a+tag@example.com"]),
            ("Empty <>", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_address_list(text).as_deref(),
                Ok(*want)
                    .map(|w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .as_deref(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn malformed_address_lists_are_refused_with_the_text_quoted() {
        let cases: &[(&str, &str)] = &[
            ("bob", "`bob` is not an address: it has no `@domain`"),
            (
                "John Doe john@example.com",
                "`John Doe john@example.com` is not an address (a name is written with the address in angle brackets",
            ),
            (
                "John Doe",
                "`John Doe` is not an address (a name is written",
            ),
            ("a@b@c", "more than one `@`"),
            (
                "a@",
                "`a@` is not an address: the part after `@` is not a domain",
            ),
            ("@b.com", "the part before `@` is not valid"),
            ("a..b@c.com", "the part before `@` is not valid"),
            ("a@b..com", "not a domain"),
            ("a@\"b\".com", "not a domain"),
            ("\"open@example.com", "has a quote that is not closed"),
            (
                "a@example.com (open",
                "has a comment `(` that is not closed",
            ),
            ("Name <a@example.com", "has a `<` that is not closed"),
            ("a@example.com>", "has a `>` without `<`"),
            (
                "<a@example.com> junk, b@example.com",
                "`junk` follows an address in `<...>` without a comma",
            ),
            ("x: y: a@b.c;;", "opens a group inside a group"),
            ("a@example.com)", "has a `)` that belongs to nothing"),
            ("<<a@example.com>>", "has `<` inside `<...>`"),
        ];
        for (text, want) in cases {
            let error = parse_address_list(text).expect_err(text);
            assert!(error.contains(want), "{text:?}: {error}");
        }
    }

    #[test]
    fn encoded_words_are_recognised_only_when_well_formed() {
        assert_eq!(encoded_word_end("=?a?q?b,c?= x", 0), Some(11));
        assert_eq!(encoded_word_end("=?a?x?b?=", 0), None);
        assert_eq!(encoded_word_end("=?a?q?b c?=", 0), None);
        assert_eq!(encoded_word_end("=?a?q?b", 0), None);
    }
}
