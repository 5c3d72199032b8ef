//! The SMTP wire grammar shared by the server and the client: commands, replies, the DATA receiver and
//! SASL encodings. Nothing here does I/O: bytes in, values out.

pub mod command;
pub mod data;
pub mod reply;
pub mod sasl;

pub use reply::Reply;
