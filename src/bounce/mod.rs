//! Never lose, never drop silently: what happens to mail that cannot be delivered.
//!
//! - [`dsn`] builds the delivery status notifications (RFC 3464 in an RFC 6522
//!   `multipart/report`) that tell a sender that delivery failed or is delayed. It is pure: the
//!   queue decides when to send one and passes the time in.
//! - [`badmail`] keeps what cannot even be bounced (a failed bounce, a spool entry that cannot be
//!   read) in `data_dir/badmail/`, with a readable reason and the envelope needed to resubmit it,
//!   like IIS's Badmail folder. Nothing there is overwritten or deleted automatically.

pub mod badmail;
pub mod dsn;
