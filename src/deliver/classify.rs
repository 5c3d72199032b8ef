//! The one classification of upstream replies and I/O errors: temporary or permanent.
//! (Being written: see issue 2.)
