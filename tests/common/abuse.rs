//! Helpers for the hardening tests: the real `smarthost` binary in a child process (its output kept
//! line by line, its pid for `/proc`), a raw client that can write byte by byte, and a *sloppy*
//! upstream that ends DATA at every published end-of-data variant, as the servers vulnerable to
//! SMTP smuggling do.
#![cfg(unix)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const WAIT: Duration = Duration::from_secs(20);

/// A port that was free a moment ago on 127.0.0.1 (the relay binds it; with `[logs] json = true`
/// the relay prints no summary to read a `:0` port from).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Raises this test process's soft limit of open files to the hard limit; returns the limit now.
pub fn raise_test_open_files() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// `smarthost serve --config FILE` in a child process.
pub struct RelayProcess {
    child: tokio::process::Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub smtp: SocketAddr,
    /// `{admin}` in the configuration, when used.
    pub admin: SocketAddr,
    /// Every line the relay wrote to stdout and stderr, in arrival order per stream.
    output: Arc<Mutex<Vec<String>>>,
}

pub struct Spawn<'a> {
    /// The configuration after `data_dir` and `hostname`; `{data}` is the data directory, `{smtp}`
    /// and `{admin}` free ports on 127.0.0.1 (`{smtp_port}` the port alone).
    pub body: &'a str,
    pub env: &'a [(&'a str, &'a str)],
    /// A shell command run before `exec smarthost serve` (e.g. `ulimit -Sn 1024`).
    pub shell_prefix: Option<&'a str>,
    /// Files written into the data directory before the start: (name, content).
    pub files: &'a [(&'a str, &'a str)],
}

impl RelayProcess {
    pub async fn start(body: &str) -> RelayProcess {
        Self::spawn(Spawn {
            body,
            env: &[],
            shell_prefix: None,
            files: &[],
        })
        .await
    }

    pub async fn spawn(spec: Spawn<'_>) -> RelayProcess {
        let dir = tempfile::tempdir().unwrap();
        let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let body = spec
            .body
            .replace("{data}", &dir.path().display().to_string())
            .replace("{smtp_port}", &smtp.port().to_string())
            .replace("{smtp}", &smtp.to_string())
            .replace("{admin}", &admin.to_string());
        let text = format!(
            "data_dir = \"{}\"\nhostname = \"relay.test\"\n{body}",
            dir.path().display()
        );
        let config = dir.path().join("smarthost.toml");
        std::fs::write(&config, &text).unwrap();
        for (name, content) in spec.files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let binary = env!("CARGO_BIN_EXE_smarthost");
        let mut command = match spec.shell_prefix {
            None => {
                let mut c = tokio::process::Command::new(binary);
                c.arg("serve").arg("--config").arg(&config);
                c
            }
            Some(prefix) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c")
                    .arg(format!("{prefix} && exec \"$0\" serve --config \"$1\""))
                    .arg(binary)
                    .arg(&config);
                c
            }
        };
        command
            .env_remove("SMARTHOST_LOG")
            .env_remove("RUST_LOG")
            .envs(spec.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start smarthost");
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    output.lock().unwrap().push(line);
                }
            });
        }
        let mut relay = RelayProcess {
            child,
            dir,
            config,
            smtp,
            admin,
            output,
        };
        relay.wait_ready().await;
        relay
    }

    /// Until the SMTP listener greets (a probe session that says QUIT and is gone when this returns).
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!("smarthost exited ({status}):\n{}", self.output().join("\n"));
            }
            if let Ok(stream) = TcpStream::connect(self.smtp).await {
                let mut c = RawClient::from_stream(stream);
                let banner = c.reply().await;
                assert!(banner.starts_with("220 "), "{banner}");
                c.send(b"QUIT\r\n").await;
                c.reply().await;
                assert!(c.closed().await);
                // The session's slot is given back just after the close.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "smarthost does not listen on {}:\n{}",
                self.smtp,
                self.output().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `smarthost <args> --config FILE`: (exit code, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("SMARTHOST_LOG")
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// SIGTERM, then waits for the exit (the W3C log is flushed at shutdown).
    pub async fn stop(mut self) -> (Vec<String>, tempfile::TempDir) {
        use rustix::process::{Pid, Signal, kill_process};
        if let Some(pid) = self.child.id().and_then(|p| Pid::from_raw(p as i32)) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let status = tokio::time::timeout(Duration::from_secs(45), self.child.wait()).await;
        assert!(status.is_ok(), "smarthost did not stop after SIGTERM");
        // The readers finish at EOF.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (self.output(), self.dir)
    }

    /// Resident memory of the relay in KiB (`None` where there is no `/proc`).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The `.eml` files in `data_dir/<folder>` (a drop route's folder), sorted by name.
    pub fn eml_files(&self, folder: &str) -> Vec<String> {
        super::inbound::outbox_files(&self.dir.path().join(folder))
    }

    pub async fn wait_eml_files(&self, folder: &str, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let files = self.eml_files(folder);
            if files.len() >= n || tokio::time::Instant::now() > deadline {
                return files;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A raw SMTP client: `TCP_NODELAY`, an optional source address, writes as the test says.
pub struct RawClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl RawClient {
    pub fn from_stream(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        RawClient {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// Connects (from `local`, e.g. 127.0.0.2, when given) and returns the client and the banner.
    pub async fn connect(addr: SocketAddr, local: Option<&str>) -> (RawClient, String) {
        let stream = Self::tcp(addr, local).await;
        let mut client = RawClient::from_stream(stream);
        let banner = client.reply().await;
        (client, banner)
    }

    pub async fn tcp(addr: SocketAddr, local: Option<&str>) -> TcpStream {
        match local {
            None => TcpStream::connect(addr).await.unwrap(),
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket
                    .bind((ip.parse::<IpAddr>().unwrap(), 0).into())
                    .unwrap();
                socket.connect(addr).await.unwrap()
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    /// One byte per write, `pause` between them: every split point becomes a packet boundary.
    pub async fn send_bytewise(&mut self, bytes: &[u8], pause: Duration) {
        for b in bytes {
            self.writer.write_all(&[*b]).await.unwrap();
            self.writer.flush().await.unwrap();
            if pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// One whole reply (all its lines joined by `\n`), or `<closed>` if the server closed first.
    pub async fn reply(&mut self) -> String {
        self.reply_within(WAIT).await.expect("a reply in time")
    }

    pub async fn reply_within(&mut self, limit: Duration) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(limit, self.reader.read_until(b'\n', &mut line))
                .await
                .ok()?
                .unwrap_or(0);
            if n == 0 {
                lines.push("<closed>".to_string());
                return Some(lines.join("\n"));
            }
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Some(lines.join("\n"));
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Whether the server closed the connection (EOF or reset) within 5 s.
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.reader.read_to_end(&mut rest)).await,
            Ok(Ok(_)) | Ok(Err(_))
        )
    }
}

/// One message as the sloppy upstream took it.
#[derive(Debug, Clone)]
pub struct SloppyMessage {
    pub sender: String,
    pub recipients: Vec<String>,
    /// The DATA bytes exactly as on the wire, up to (not including) the terminator it accepted.
    pub wire: Vec<u8>,
}

/// An upstream as lax as the servers SMTP smuggling exploits: after DATA, a line holding only `.`
/// ends the message whatever ends the lines around it (`<LF>`, `<CR>` or `<CRLF>`), and what follows
/// is read as commands. If the relay ever lets such a sequence through, this server sees two
/// messages where the client sent one. Plain SMTP, PIPELINING, no AUTH.
pub struct SloppyUpstream {
    pub addr: SocketAddr,
    messages: Arc<Mutex<Vec<SloppyMessage>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for SloppyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SloppyUpstream {
    pub async fn start() -> SloppyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let store = messages.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = sloppy_session(stream, store).await;
                });
            }
        });
        SloppyUpstream {
            addr,
            messages,
            task: task.abort_handle(),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn messages(&self) -> Vec<SloppyMessage> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until `n` messages arrived (or 20 s), then a little longer so that extra ones show.
    pub async fn wait_for(&self, n: usize) -> Vec<SloppyMessage> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.messages().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.messages()
    }
}

/// Where a lax end of data in `buf` starts (the content ends there) and the index just past it: a
/// line of `.` between any of CR, LF, CRLF; `buf` starts a line (it begins just after 354).
fn lax_end_of_data(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i] != b'.' {
            continue;
        }
        let line_start = i == 0 || matches!(buf[i - 1], b'\r' | b'\n');
        if !line_start {
            continue;
        }
        let after = match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\r'), Some(b'\n')) => i + 3,
            (Some(b'\r'), Some(_)) | (Some(b'\n'), _) => i + 2,
            // A CR at the very end: wait for the next byte to know whether an LF follows.
            _ => continue,
        };
        return Some((i, after));
    }
    None
}

async fn sloppy_session(
    mut stream: TcpStream,
    store: Arc<Mutex<Vec<SloppyMessage>>>,
) -> std::io::Result<()> {
    stream
        .write_all(b"220 sloppy.test ESMTP lax end of data\r\n")
        .await?;
    let mut buf: Vec<u8> = Vec::new();
    let mut sender: Option<String> = None;
    let mut recipients: Vec<String> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Commands: one per LF.
        while let Some(lf) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=lf).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            let upper = line.to_ascii_uppercase();
            let path = || {
                let open = line.find('<').map_or(0, |i| i + 1);
                let close = line.rfind('>').unwrap_or(line.len());
                line[open..close.max(open)].to_string()
            };
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-sloppy.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n"
            } else if upper.starts_with("HELO") || upper.starts_with("RSET") {
                sender = None;
                recipients.clear();
                b"250 OK\r\n"
            } else if upper.starts_with("MAIL FROM:") {
                sender = Some(path());
                recipients.clear();
                b"250 OK\r\n"
            } else if upper.starts_with("RCPT TO:") {
                recipients.push(path());
                b"250 OK\r\n"
            } else if upper == "DATA" {
                stream
                    .write_all(b"354 go ahead, end with <CRLF>.<CRLF>\r\n")
                    .await?;
                // The content: up to the first lax end of data.
                let (end, after) = loop {
                    if let Some(found) = lax_end_of_data(&buf) {
                        break found;
                    }
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                };
                let wire: Vec<u8> = buf[..end].to_vec();
                buf.drain(..after);
                store.lock().unwrap().push(SloppyMessage {
                    sender: sender.take().unwrap_or_default(),
                    recipients: std::mem::take(&mut recipients),
                    wire,
                });
                b"250 OK queued\r\n"
            } else if upper == "QUIT" {
                stream.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else if upper.starts_with("NOOP") {
                b"250 OK\r\n"
            } else {
                b"500 unknown\r\n"
            };
            stream.write_all(reply).await?;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
