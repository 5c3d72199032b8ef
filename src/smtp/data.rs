//! The DATA receiver (RFC 5321 §4.5.2) and its inverse for the client side.
//! (Being written: see issue 2.)

/// What [`DataReceiver::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// All input was consumed; the end-of-data marker has not been seen yet.
    NeedMore,
    /// The end-of-data marker ended at `consumed` bytes into this input; the rest belongs to the next
    /// command (pipelining).
    Complete { consumed: usize },
}

/// Receives message content after `354`, undoing dot-stuffing. The message ends only at
/// `<CRLF>.<CRLF>`; bare CR and bare LF never end or split it (see the module docs for the rule).
#[derive(Debug)]
pub struct DataReceiver {
    _todo: (),
}

impl DataReceiver {
    /// `max_size`: content bytes kept at most; beyond it the rest is read and discarded.
    pub fn new(max_size: u64) -> Self {
        let _ = max_size;
        todo!("grammar helper")
    }

    /// Feeds bytes read from the client; appends the unstuffed content to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataStatus {
        let _ = (input, out);
        todo!("grammar helper")
    }

    /// True when the content grew past `max_size` (then `out` holds only the first part).
    pub fn exceeded(&self) -> bool {
        todo!("grammar helper")
    }
}

/// Appends `content` to `out` in its wire form for DATA: dot-stuffed, ending with `<CRLF>.<CRLF>`
/// (a CRLF is added first when the content does not end with one).
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    let _ = (content, out);
    todo!("grammar helper")
}
