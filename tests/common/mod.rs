//! Shared helpers for integration tests: `mod common;` in a test file.
//! Not every test binary uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod abuse;
pub mod certs;
pub mod client;
pub mod dsn;
pub mod graph_mock;
pub mod inbound;
pub mod standin;
pub mod tls_client;
pub mod token_endpoint;
pub mod upstream;
