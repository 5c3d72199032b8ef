//! Logs for administrators beside tracing: [`w3c`] writes the per-command SMTP log in the W3C
//! extended format that IIS SMTP wrote (`data_dir/logs/smtpsvc-YYYYMMDD.log`), so the scripts that
//! read IIS's log files keep working; `smarthost logs export` turns them into CSV.

pub mod w3c;

pub use w3c::LogSink;
