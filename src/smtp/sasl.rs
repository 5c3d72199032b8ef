//! SASL encodings used in SMTP AUTH (RFC 4954): PLAIN (RFC 4616), LOGIN, XOAUTH2.
//! Pure functions: strings in, base64 out (and back, for the server side).
//! (Being written: see issue 2.)
