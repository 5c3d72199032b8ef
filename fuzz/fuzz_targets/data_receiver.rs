//! The DATA receiver (`smtp::data::DataReceiver`), fed the same bytes whole and split at
//! fuzzer-chosen points. Invariants (the module docs of `smtp/data.rs`):
//! - The message ends only at `<CRLF>.<CRLF>` (the CRLF that ended the DATA command counts as the
//!   first one), at its first occurrence: no other sequence ends it.
//! - Every chunking gives byte-identical content, size and end position.
//! - The content is CRLF text (no bare CR or LF) and matches a naive line-by-line model.
//! - Its wire form (`dot_stuff`) contains the end marker only at its very end, and a second receiver
//!   reads it back to the same content: no lone `.` line in the content can end the message early
//!   upstream (SMTP smuggling).
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use smarthost::smtp::data::{DataReceiver, DataStatus, dot_stuff};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    content: Vec<u8>,
    end: Option<usize>,
    size: u64,
    exceeded: bool,
    bare: bool,
}

fn receive(input: &[u8], cuts: &[usize], max_size: u64) -> Outcome {
    let mut receiver = DataReceiver::new(max_size);
    let mut content = Vec::new();
    let mut end = None;
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        if let DataStatus::Complete { consumed } = receiver.feed(&input[start..cut], &mut content) {
            assert!(consumed <= cut - start);
            end = Some(start + consumed);
            break;
        }
        start = cut;
    }
    assert_eq!(end.is_some(), receiver.is_complete());
    Outcome {
        content,
        end,
        size: receiver.size(),
        exceeded: receiver.exceeded(),
        bare: receiver.had_bare_line_endings(),
    }
}

/// Where the message must end: just past the first `<CRLF>.<CRLF>`, counting the CRLF before the
/// input.
fn expected_end(data: &[u8]) -> Option<usize> {
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(data);
    framed
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|at| at + 5 - 2)
}

/// A naive model: split into lines, look at each whole line (a copy of the unit tests' model).
fn reference(input: &[u8]) -> Vec<u8> {
    let mut content = Vec::new();
    let mut after_crlf = true;
    let mut pos = 0;
    loop {
        let Some(offset) = input[pos..].iter().position(|&b| b == b'\r' || b == b'\n') else {
            // The unfinished last line, without its held-back dot.
            let line = &input[pos..];
            content.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            return content;
        };
        let line = &input[pos..pos + offset];
        let at = pos + offset;
        let (crlf, next) = match (input[at], input.get(at + 1)) {
            (b'\r', Some(b'\n')) => (true, at + 2),
            (b'\r', None) => {
                content.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
                return content;
            }
            _ => (false, at + 1),
        };
        if line == b"." && after_crlf && crlf {
            return content;
        }
        let kept = match line {
            b"." => line,
            [b'.', rest @ ..] => rest,
            _ => line,
        };
        content.extend_from_slice(kept);
        content.extend_from_slice(b"\r\n");
        after_crlf = crlf;
        pos = next;
    }
}

fn assert_crlf_text(content: &[u8]) {
    for (i, &b) in content.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(content.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && content[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
}

// Input: the cut points (`Vec<u16>`, each element after a byte with the low bit set; taken modulo
// the length of the data, then sorted), a size limit (`Option<u16>`), then the data itself: all the
// remaining bytes, so that a seed is a few bytes of header and a readable message.
fuzz_target!(|bytes: &[u8]| {
    let mut u = Unstructured::new(bytes);
    let (Ok(cuts), Ok(max_size)) = (u.arbitrary::<Vec<u16>>(), u.arbitrary::<Option<u16>>()) else {
        return;
    };
    let data = u.take_rest();
    let mut cuts: Vec<usize> = cuts
        .iter()
        .map(|&c| {
            if data.is_empty() {
                0
            } else {
                usize::from(c) % (data.len() + 1)
            }
        })
        .collect();
    cuts.sort_unstable();
    let max_size = max_size.map_or(u64::MAX, u64::from);

    let whole = receive(data, &[], max_size);
    let split = receive(data, &cuts, max_size);
    assert_eq!(whole, split, "chunking changed the result (cuts {cuts:?})");
    let bytewise: Vec<usize> = (1..data.len()).collect();
    assert_eq!(
        whole,
        receive(data, &bytewise, max_size),
        "byte-by-byte feeding changed the result"
    );

    assert_eq!(
        whole.end,
        expected_end(data),
        "the message did not end at the first CRLF.CRLF"
    );
    assert_eq!(whole.exceeded, whole.size > max_size);
    let unlimited = if max_size == u64::MAX {
        whole
    } else {
        receive(data, &[], u64::MAX)
    };
    assert_eq!(unlimited.size, unlimited.content.len() as u64);
    // With a limit, the kept content is a prefix of the whole.
    if max_size != u64::MAX {
        let kept = receive(data, &[], max_size);
        assert_eq!(kept.size, unlimited.size);
        assert!(unlimited.content.starts_with(&kept.content));
        assert_eq!(kept.content.len() as u64, unlimited.size.min(max_size));
    }

    let content = &unlimited.content;
    let consumed = &data[..unlimited.end.unwrap_or(data.len())];
    assert_eq!(
        content,
        &reference(consumed),
        "content differs from the line model"
    );
    if unlimited.end.is_none() {
        return;
    }
    assert_crlf_text(content);

    // The wire form ends only where it should, and reads back to the same content.
    let mut wire = Vec::new();
    dot_stuff(content, &mut wire);
    assert_eq!(
        expected_end(&wire),
        Some(wire.len()),
        "the wire form ends early: {wire:?}"
    );
    let again = receive(&wire, &[], u64::MAX);
    assert_eq!(again.end, Some(wire.len()));
    let mut normalised = content.clone();
    if !normalised.is_empty() && !normalised.ends_with(b"\r\n") {
        normalised.extend_from_slice(b"\r\n");
    }
    assert_eq!(
        again.content, normalised,
        "the wire form does not read back to the content"
    );
});
