//! smarthost: an SMTP relay that accepts mail the way old devices send it, keeps it durably on disk,
//! and delivers it the way Microsoft 365 accepts it. See `ARCHITECTURE.md` for the path of a message.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bounce;
pub mod check;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod deliver;
pub mod ingest;
pub mod logs;
pub mod pickup;
pub mod policy;
pub mod queue;
pub mod route;
pub mod server;
pub mod smtp;
pub mod spool;
