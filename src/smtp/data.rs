//! The DATA receiver (RFC 5321 §4.5.2) and its inverse for the client side.
//!
//! # The end of the message
//! The message ends only at `<CRLF>.<CRLF>`, where the first CRLF may be the one that ended the DATA
//! command (input that starts with `.<CRLF>` is an empty message). Nothing else ends it: not `<LF>.<LF>`,
//! `<CR>.<CR>`, `<LF>.<CRLF>`, `<CRLF>.<LF>` nor `<CRLF>.<CR>`. This is what makes SMTP smuggling
//! impossible: every server in the chain must agree on where a message ends, and the only marker all of
//! them agree on is the one the RFC defines.
//!
//! # Normalisation (the content as stored)
//! - Content is stored with CRLF line endings. A bare LF and a bare CR each end a line and are stored as
//!   CRLF: old devices send bare LF, and refusing them would break them; keeping them bare would let an
//!   upstream read them as line ends differently than we did.
//! - A line that begins with `.` loses that first dot (transparency, RFC 5321 §4.5.2).
//! - Except a line that is exactly `.` and did not end the message (because a bare CR or LF started or
//!   ended it): it is stored as `.`. [`dot_stuff`] sends it as `..`, so it can never become an end
//!   marker upstream.
//!
//! # Incremental input
//! [`DataReceiver::feed`] accepts input split at any byte: a CR at the end of one chunk, or a `.` at the
//! start of a line, is held in the state until the next byte decides what it was. Feeding the same bytes
//! in any chunking gives byte-identical content and the same end position.
//!
//! # Size limit
//! At most `max_size` content bytes (as stored, after normalisation) are appended; the rest is counted
//! and discarded, and reading continues to the end marker so that the session stays in step with the
//! client.

use memchr::memchr2;

/// What [`DataReceiver::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// All input was consumed; the end-of-data marker has not been seen yet.
    NeedMore,
    /// The end-of-data marker ended at `consumed` bytes into this input; the rest belongs to the next
    /// command (pipelining).
    Complete { consumed: usize },
}

/// Where the receiver is within the current line. `after_crlf` records whether the line was started
/// by a real CRLF (or is the first line): only then can a `.` line be the end marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart {
        after_crlf: bool,
    },
    /// A line that starts with `.`; the dot is held back until we know whether the line is just `.`.
    Dot {
        after_crlf: bool,
    },
    /// `.` then CR at the start of a line: the end marker if an LF follows and the line began with CRLF.
    DotCr {
        after_crlf: bool,
    },
    /// Inside a line whose first byte has been handled.
    Mid,
    /// A CR inside or at the start of a line, not yet known to be part of a CRLF.
    Cr,
    Done,
}

/// Receives message content after `354`, undoing dot-stuffing. The message ends only at
/// `<CRLF>.<CRLF>`; bare CR and bare LF never end or split it (see the module docs for the rule).
#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    max_size: u64,
    size: u64,
    bare_line_endings: bool,
}

const CRLF: &[u8] = b"\r\n";
const DOT_CRLF: &[u8] = b".\r\n";

impl DataReceiver {
    /// `max_size`: content bytes kept at most; beyond it the rest is read and discarded.
    pub fn new(max_size: u64) -> Self {
        DataReceiver {
            state: State::LineStart { after_crlf: true },
            max_size,
            size: 0,
            bare_line_endings: false,
        }
    }

    /// Feeds bytes read from the client; appends the unstuffed content to `out`.
    /// Once the message is complete, further input is not consumed (`Complete { consumed: 0 }`).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataStatus {
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            // Arms that do not advance `i` hand the same byte to the next state.
            match self.state {
                State::Mid => i = self.copy_lines(input, i, out),
                State::LineStart { after_crlf } => match byte {
                    b'.' => {
                        self.state = State::Dot { after_crlf };
                        i += 1;
                    }
                    b'\r' => {
                        self.state = State::Cr;
                        i += 1;
                    }
                    b'\n' => {
                        self.end_line_bare(CRLF, out);
                        i += 1;
                    }
                    _ => self.state = State::Mid,
                },
                State::Cr => {
                    if byte == b'\n' {
                        self.emit(CRLF, out);
                        self.state = State::LineStart { after_crlf: true };
                        i += 1;
                    } else {
                        self.end_line_bare(CRLF, out);
                    }
                }
                State::Dot { after_crlf } => match byte {
                    b'\r' => {
                        self.state = State::DotCr { after_crlf };
                        i += 1;
                    }
                    b'\n' => {
                        self.end_line_bare(DOT_CRLF, out);
                        i += 1;
                    }
                    // Transparency: the held-back dot is dropped, the rest of the line is content.
                    _ => self.state = State::Mid,
                },
                State::DotCr { after_crlf } => {
                    if byte == b'\n' && after_crlf {
                        self.state = State::Done;
                        return DataStatus::Complete { consumed: i + 1 };
                    } else if byte == b'\n' {
                        self.emit(DOT_CRLF, out);
                        self.state = State::LineStart { after_crlf: true };
                        i += 1;
                    } else {
                        self.end_line_bare(DOT_CRLF, out);
                    }
                }
                State::Done => return DataStatus::Complete { consumed: 0 },
            }
        }
        if self.state == State::Done {
            DataStatus::Complete { consumed: 0 }
        } else {
            DataStatus::NeedMore
        }
    }

    /// The fast path, from `Mid`: copies whole lines at once for as long as they end in CRLF and the
    /// next line does not start with `.`. Returns the index of the first byte it did not handle.
    fn copy_lines(&mut self, input: &[u8], start: usize, out: &mut Vec<u8>) -> usize {
        let mut i = start;
        loop {
            let Some(offset) = memchr2(b'\r', b'\n', &input[i..]) else {
                self.emit(&input[start..], out);
                return input.len();
            };
            let at = i + offset;
            // An LF seen here is bare: a CR before it would have been found first.
            if input[at] == b'\n' {
                self.emit(&input[start..at], out);
                self.end_line_bare(CRLF, out);
                return at + 1;
            }
            match input.get(at + 1) {
                None => {
                    self.emit(&input[start..at], out);
                    self.state = State::Cr;
                    return at + 1;
                }
                Some(b'\n') => {
                    let next_line = at + 2;
                    if input.get(next_line).is_some_and(|&b| b != b'.') {
                        i = next_line;
                        continue;
                    }
                    self.emit(&input[start..next_line], out);
                    self.state = State::LineStart { after_crlf: true };
                    return next_line;
                }
                Some(_) => {
                    self.emit(&input[start..at], out);
                    self.end_line_bare(CRLF, out);
                    return at + 1;
                }
            }
        }
    }

    /// Ends a line whose terminator was a bare CR or LF, after appending `tail`.
    fn end_line_bare(&mut self, tail: &[u8], out: &mut Vec<u8>) {
        self.bare_line_endings = true;
        self.emit(tail, out);
        self.state = State::LineStart { after_crlf: false };
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let room = self.max_size.saturating_sub(self.size);
        let keep = usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()));
        out.extend_from_slice(&bytes[..keep]);
        self.size = self.size.saturating_add(bytes.len() as u64);
    }

    /// True when the content grew past `max_size` (then `out` holds only the first part).
    pub fn exceeded(&self) -> bool {
        self.size > self.max_size
    }

    /// Content bytes seen so far (after normalisation), including those discarded beyond `max_size`.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when the client ended some line with a bare CR or LF (stored as CRLF); worth a log line.
    pub fn had_bare_line_endings(&self) -> bool {
        self.bare_line_endings
    }

    /// True once the end-of-data marker has been read.
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }
}

/// Appends `content` to `out` in its wire form for DATA: dot-stuffed, ending with `<CRLF>.<CRLF>`
/// (a CRLF is added first when the content does not end with one).
///
/// Content is expected to be CRLF-normalised already; should a bare CR or LF slip through, it is sent
/// as CRLF (and the line after it stuffed), so the wire form can never be read two ways upstream.
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    // Room for the terminator and a few stuffed dots, so the common case allocates once.
    out.reserve(content.len() + 16);
    if content.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut copied = 0;
    let mut i = 0;
    while let Some(offset) = memchr2(b'\r', b'\n', &content[i..]) {
        let at = i + offset;
        let next_line = if content[at] == b'\r' && content.get(at + 1) == Some(&b'\n') {
            at + 2
        } else {
            out.extend_from_slice(&content[copied..at]);
            out.extend_from_slice(CRLF);
            copied = at + 1;
            at + 1
        };
        if content.get(next_line) == Some(&b'.') {
            out.extend_from_slice(&content[copied..next_line]);
            out.push(b'.');
            copied = next_line;
        }
        i = next_line;
    }
    out.extend_from_slice(&content[copied..]);
    if !matches!(content.last(), None | Some(b'\r' | b'\n')) {
        out.extend_from_slice(CRLF);
    }
    out.extend_from_slice(DOT_CRLF);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything observable about one run of the receiver.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        content: Vec<u8>,
        /// Absolute offset just past the end marker, if it was seen.
        end: Option<usize>,
        size: u64,
        exceeded: bool,
        bare: bool,
    }

    fn receive_in_chunks(input: &[u8], cuts: &[usize], max_size: u64) -> Outcome {
        let mut receiver = DataReceiver::new(max_size);
        let mut content = Vec::new();
        let mut end = None;
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            if let DataStatus::Complete { consumed } =
                receiver.feed(&input[start..cut], &mut content)
            {
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

    fn receive(input: &[u8]) -> Outcome {
        receive_in_chunks(input, &[], u64::MAX)
    }

    /// A deliberately naive model of the module-doc rule: split into lines, look at each whole line.
    fn reference(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut content = Vec::new();
        let mut after_crlf = true;
        let mut pos = 0;
        loop {
            let Some(offset) = input[pos..].iter().position(|&b| b == b'\r' || b == b'\n') else {
                return (content, None);
            };
            let line = &input[pos..pos + offset];
            let at = pos + offset;
            let (crlf, next) = match (input[at], input.get(at + 1)) {
                (b'\r', Some(b'\n')) => (true, at + 2),
                (b'\r', None) => return (content, None),
                _ => (false, at + 1),
            };
            if line == b"." && after_crlf && crlf {
                return (content, Some(next));
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

    const FOLLOWING_COMMANDS: &[u8] =
        b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n";

    /// (input, content, end offset, had bare line endings)
    type EndCase = (&'static [u8], &'static [u8], Option<usize>, bool);

    #[test]
    fn end_marker_cases() {
        let cases: &[EndCase] = &[
            (b".\r\n", b"", Some(3), false),
            (b".\r\nQUIT\r\n", b"", Some(3), false),
            (b"\r\n.\r\n", b"\r\n", Some(5), false),
            (b"hello\r\n.\r\n", b"hello\r\n", Some(10), false),
            (b"hello\r\n.\r\nQUIT\r\n", b"hello\r\n", Some(10), false),
            (b"..\r\n.\r\n", b".\r\n", Some(7), false),
            (b"...\r\n.\r\n", b"..\r\n", Some(8), false),
            (b".x\r\n.\r\n", b"x\r\n", Some(7), false),
            (
                b"a\r\n.b\r\n..\r\n.\r\n",
                b"a\r\nb\r\n.\r\n",
                Some(14),
                false,
            ),
            (b"a\r\r\n.\r\n", b"a\r\n\r\n", Some(7), true),
            (b"a\n\r\n.\r\n", b"a\r\n\r\n", Some(7), true),
            (b"a\nb\rc\r\n.\r\n", b"a\r\nb\r\nc\r\n", Some(10), true),
            (b"no end", b"no end", None, false),
            (b"no end\r\n", b"no end\r\n", None, false),
            (b"no end\r\n.", b"no end\r\n", None, false),
            (b"no end\r\n.\r", b"no end\r\n", None, false),
            (b"", b"", None, false),
            (b".", b"", None, false),
            (b".\n", b".\r\n", None, true),
            (b".\r", b"", None, false),
            (b".\rX", b".\r\nX", None, true),
            (
                b"8bit \xff\x00 bytes\r\n.\r\n",
                b"8bit \xff\x00 bytes\r\n",
                Some(18),
                false,
            ),
        ];
        for &(input, content, end, bare) in cases {
            let got = receive(input);
            let shown = String::from_utf8_lossy(input);
            assert_eq!(
                String::from_utf8_lossy(&got.content),
                String::from_utf8_lossy(content),
                "{shown:?}"
            );
            assert_eq!(got.end, end, "{shown:?}");
            assert_eq!(got.bare, bare, "{shown:?}");
            assert_eq!(got.size, content.len() as u64, "{shown:?}");
        }
    }

    #[test]
    fn smuggling_sequences_never_end_the_message() {
        // (sequence after "Subject: x", what it becomes in content)
        let cases: &[(&[u8], &[u8])] = &[
            (b"\n.\n", b"\r\n.\r\n"),
            (b"\r.\r", b"\r\n.\r\n"),
            (b"\n.\r\n", b"\r\n.\r\n"),
            (b"\r.\r\n", b"\r\n.\r\n"),
            (b"\r\n.\n", b"\r\n.\r\n"),
            (b"\r\n.\r", b"\r\n.\r\n"),
            (b"\n.\r", b"\r\n.\r\n"),
            (b"\r.\n", b"\r\n.\r\n"),
            (b"\r\n.\r\r\n", b"\r\n.\r\n\r\n"),
            (b"\r\n.\n\r\n", b"\r\n.\r\n\r\n"),
            (b"\r\n\n.\r\n", b"\r\n\r\n.\r\n"),
            (b"\r\n\r.\r\n", b"\r\n\r\n.\r\n"),
            (b"\r\n.\x00\r\n", b"\r\n\x00\r\n"),
            (b"\r\n .\r\n", b"\r\n .\r\n"),
        ];
        for &(sequence, normalised) in cases {
            let mut input = b"Subject: x".to_vec();
            input.extend_from_slice(sequence);
            input.extend_from_slice(FOLLOWING_COMMANDS);
            let shown = String::from_utf8_lossy(sequence);
            let got = receive(&input);
            assert_eq!(got.end, None, "{shown:?} ended the message");

            // The real end marker still works, and everything before it is content.
            input.extend_from_slice(b".\r\n");
            let got = receive(&input);
            assert_eq!(got.end, Some(input.len()), "{shown:?}");
            let mut expected = b"Subject: x".to_vec();
            expected.extend_from_slice(normalised);
            expected.extend_from_slice(FOLLOWING_COMMANDS);
            assert_eq!(
                String::from_utf8_lossy(&got.content),
                String::from_utf8_lossy(&expected),
                "{shown:?}"
            );
            // Sent on, the fake marker is stuffed and cannot end the message upstream either.
            let mut wire = Vec::new();
            dot_stuff(&got.content, &mut wire);
            assert_eq!(receive(&wire).end, Some(wire.len()), "{shown:?}");
            assert_eq!(receive(&wire).content, got.content, "{shown:?}");
        }
    }

    const TRICKY_INPUTS: &[&[u8]] = &[
        b".\r\n",
        b"hello\r\n.\r\nQUIT\r\n",
        b"a\r\n..\r\n.b\r\n.\r\n",
        b"a\r\r\n.\r\n",
        b"a\n.\nb\r.\rc\r\n.\rd\n.\r\ne\r\n.\n\r\n.\r\nRSET\r\n",
        b"\r\r\r\n\n\n.\r\r\n.\r\n",
        b"\r\n.\r\n",
        b".\n.\r.\r\n..\r\n.\r\n",
        b"line one\r\nline two\r\n\r\n.\r\nNOOP\r\n",
        b"x\r\n.\r",
        b"Subject: x\r\n.\rMAIL FROM:<e@x>\r\n.\r\n",
    ];

    #[test]
    fn any_two_way_split_gives_the_same_result() {
        for &input in TRICKY_INPUTS {
            for max_size in [u64::MAX, 0, 3, 9] {
                let whole = receive_in_chunks(input, &[], max_size);
                for cut in 0..=input.len() {
                    assert_eq!(
                        receive_in_chunks(input, &[cut], max_size),
                        whole,
                        "{:?} cut at {cut}, max {max_size}",
                        String::from_utf8_lossy(input)
                    );
                }
            }
        }
    }

    #[test]
    fn one_byte_chunks_give_the_same_result() {
        for &input in TRICKY_INPUTS {
            let cuts: Vec<usize> = (1..input.len()).collect();
            assert_eq!(
                receive_in_chunks(input, &cuts, u64::MAX),
                receive(input),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn random_inputs_match_the_reference_model_in_any_chunking() {
        // xorshift: deterministic, and no test-only dependency.
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"\r\n.a";
        for _ in 0..5000 {
            let len = (next() % 24) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| alphabet[(next() % 4) as usize]).collect();
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            let (content, end) = reference(&input);
            let whole = receive(&input);
            assert_eq!(
                (&whole.content, whole.end),
                (&content, end),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
            let mut cuts: Vec<usize> = (0..3).map(|_| (next() as usize) % input.len()).collect();
            cuts.sort_unstable();
            assert_eq!(receive_in_chunks(&input, &cuts, u64::MAX), whole);
        }
    }

    #[test]
    fn dot_stuff_then_receive_round_trips() {
        let contents: &[&[u8]] = &[
            b"",
            b"\r\n",
            b".\r\n",
            b"..\r\n",
            b".x\r\n",
            b"a\r\n.\r\nb\r\n",
            b"a\r\n..\r\n...\r\n.b\r\n",
            b"Subject: hi\r\n\r\nbody\r\n",
            b"\r\n\r\n\r\n",
            b"8bit \xe9\xff\x00\r\n",
        ];
        for &content in contents {
            let mut wire = Vec::new();
            dot_stuff(content, &mut wire);
            wire.extend_from_slice(b"QUIT\r\n");
            let got = receive(&wire);
            assert_eq!(
                got.content,
                content,
                "{:?}",
                String::from_utf8_lossy(content)
            );
            assert_eq!(got.end, Some(wire.len() - 6));
            assert!(!got.bare);
        }
        // Without a final CRLF, the round trip adds exactly one.
        for content in [&b"no newline"[..], b".", b"a\r\n.", b"a\r\n.."] {
            let mut wire = Vec::new();
            dot_stuff(content, &mut wire);
            let mut expected = content.to_vec();
            expected.extend_from_slice(b"\r\n");
            assert_eq!(receive(&wire).content, expected);
        }
    }

    #[test]
    fn dot_stuff_wire_forms() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.\r\n..\r\n.x", b"a\r\n..\r\n...\r\n..x\r\n.\r\n"),
            // Not normalised: still unambiguous on the wire.
            (b"a\n.\n", b"a\r\n..\r\n.\r\n"),
            (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"\r", b"\r\n.\r\n"),
            (b"\n", b"\r\n.\r\n"),
        ];
        for &(content, wire) in cases {
            let mut out = b"prefix ".to_vec();
            dot_stuff(content, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out[7..]),
                String::from_utf8_lossy(wire),
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
    }

    #[test]
    fn content_beyond_the_limit_is_counted_but_not_kept() {
        let input = b"hello world\r\n.x\r\n.\r\nQUIT\r\n";
        let got = receive_in_chunks(input, &[], 5);
        assert_eq!(got.content, b"hello");
        assert_eq!(got.end, Some(20));
        assert_eq!(got.size, 16);
        assert!(got.exceeded);

        let exact = receive_in_chunks(input, &[], 16);
        assert_eq!(exact.content, b"hello world\r\nx\r\n");
        assert!(!exact.exceeded);

        let nothing = receive_in_chunks(input, &[], 0);
        assert!(nothing.content.is_empty() && nothing.exceeded);
        assert_eq!(nothing.end, Some(20));
    }

    #[test]
    fn input_after_completion_is_not_consumed() {
        let mut receiver = DataReceiver::new(u64::MAX);
        let mut out = Vec::new();
        assert_eq!(
            receiver.feed(b"a\r\n.\r\nQUIT\r\n", &mut out),
            DataStatus::Complete { consumed: 6 }
        );
        assert_eq!(
            receiver.feed(b"more\r\n.\r\n", &mut out),
            DataStatus::Complete { consumed: 0 }
        );
        assert_eq!(out, b"a\r\n");
    }
}
