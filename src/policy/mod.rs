//! Inbound policy: who may authenticate, as whom they may send, and which addresses are locked
//! out for failing AUTH (issue 5).
//!
//! - `users`: the `[[user]]` accounts ([`users::UserDb`]): argon2 verification and allowed senders.
//! - `lockout`: failed-AUTH counting per client address ([`lockout::Lockout`]).
//! - `sasl_server`: the server side of the AUTH exchange ([`sasl_server::SaslExchange`]), no I/O.

pub mod lockout;
pub mod sasl_server;
pub mod users;
