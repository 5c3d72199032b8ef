//! A relay for the inbound tests (listeners, TLS, AUTH, limits): its own data directory holding a
//! fresh test certificate, delivering to `data_dir/outbox`.

use super::certs::TestPki;
use smarthost::cli::serve::{Running, start_with_clock};
use smarthost::clock::{Clock, SystemClock};
use smarthost::config::load_str;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct InboundRelay {
    running: Option<Running>,
    /// The bound address of each listener, in the order written.
    pub addrs: Vec<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl InboundRelay {
    /// `body` is TOML for the listeners, limits and users; `{cert}` and `{key}` stand for the PEM
    /// files of a certificate for `localhost`, signed by `pki`'s CA.
    pub async fn start(body: &str) -> InboundRelay {
        Self::start_with_clock(body, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(body: &str, clock: Arc<dyn Clock>) -> InboundRelay {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let (cert, key) = pki.write_server_pem(dir.path());
        let body = body
            .replace("{cert}", &cert.display().to_string())
            .replace("{key}", &key.display().to_string());
        let text = format!(
            r#"
data_dir = "{}"
hostname = "relay.test"
{body}
[[route]]
name = "outbox"
domains = ["*"]
transport = "drop"
path = "outbox"
"#,
            dir.path().display()
        );
        let config = load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let running = start_with_clock(config, clock).await.expect("relay starts");
        let addrs = running.local_addrs.clone();
        InboundRelay {
            running: Some(running),
            addrs,
            dir,
            pki,
            cert,
            key,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn ca(&self) -> &str {
        &self.pki.ca_pem
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    /// Waits until `n` files are in the outbox and returns their contents, sorted by name.
    pub async fn wait_outbox(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let files = outbox_files(&self.outbox());
            if files.len() >= n || tokio::time::Instant::now() > deadline {
                return files;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        self.running.take().unwrap().shutdown().await;
    }
}

pub fn outbox_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
        .collect()
}

/// An argon2id hash with tiny parameters: verifying it is fast even in a debug build. (Production
/// hashes from `smarthost passwd` use 19 MiB and 2 passes.)
pub fn quick_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(64, 1, 1, None).unwrap();
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"smarthost-tests!").unwrap();
    argon2
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// A `[[user]]` table; no `allowed_senders` when the list is empty (any sender).
pub fn user(name: &str, password: &str, allowed_senders: &[&str]) -> String {
    let mut table = format!(
        "[[user]]\nname = {name:?}\npassword_hash = {:?}\n",
        quick_hash(password)
    );
    if !allowed_senders.is_empty() {
        let senders: Vec<String> = allowed_senders.iter().map(|s| format!("{s:?}")).collect();
        table.push_str(&format!("allowed_senders = [{}]\n", senders.join(", ")));
    }
    table
}

/// The base64 PLAIN initial response for `user` and `password`.
pub fn plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

pub fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
