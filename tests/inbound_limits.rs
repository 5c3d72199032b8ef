//! Connection limits and time limits against the real server: who may connect (allow_from,
//! deny_from), connections per address and in total, messages per connection, the session time
//! limit, and a client that dribbles a command one byte at a time (slowloris).

mod common;

use common::client::Client;
use common::inbound::InboundRelay;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn listener(extra: &str) -> String {
    format!("[[listener]]\naddress = \"127.0.0.1:0\"\nrelay_from = [\"127.0.0.0/8\"]\n{extra}\n")
}

/// The first line the server sends, then whether it closes the connection.
async fn greeting_from(
    addr: std::net::SocketAddr,
    local: Option<&str>,
) -> (String, BufReader<TcpStream>) {
    let stream = match local {
        None => TcpStream::connect(addr).await.unwrap(),
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind((ip.parse::<std::net::IpAddr>().unwrap(), 0).into())
                .unwrap();
            socket.connect(addr).await.unwrap()
        }
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .expect("a greeting in time")
        .unwrap();
    (line.trim_end().to_string(), reader)
}

async fn closed(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> bool {
    let mut line = String::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn deny_from_and_allow_from_refuse_at_connect_with_554() {
    let relay = InboundRelay::start(&listener(
        "allow_from = [\"127.0.0.0/29\"]\ndeny_from = [\"127.0.0.2/32\"]",
    ))
    .await;
    let (greeting, mut reader) = greeting_from(relay.addr(), Some("127.0.0.2")).await;
    assert_eq!(greeting, "554 5.7.1 127.0.0.2 is not allowed to connect");
    assert!(closed(&mut reader).await);
    let (greeting, mut reader) = greeting_from(relay.addr(), Some("127.0.0.9")).await;
    assert_eq!(greeting, "554 5.7.1 127.0.0.9 is not allowed to connect");
    assert!(closed(&mut reader).await);
    let (greeting, _) = greeting_from(relay.addr(), Some("127.0.0.3")).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    relay.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_limited() {
    let relay = InboundRelay::start(&listener("max_connections_per_ip = 2")).await;
    let (mut first, _) = Client::connect(relay.addr()).await;
    let (_second, _) = Client::connect(relay.addr()).await;
    let (greeting, mut reader) = greeting_from(relay.addr(), None).await;
    assert_eq!(greeting, "421 4.7.0 Too many connections from your address");
    assert!(closed(&mut reader).await);
    // Another address is not affected.
    let (greeting, _) = greeting_from(relay.addr(), Some("127.0.0.2")).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    // A place frees when a connection ends.
    first.cmd("QUIT").await;
    assert!(first.closed().await);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (greeting, _) = greeting_from(relay.addr(), None).await;
        if greeting.starts_with("220 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the place was not freed: {greeting}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn connections_over_all_listeners_are_limited() {
    let relay = InboundRelay::start(&format!(
        "{}{}[limits]\nmax_connections = 2\n",
        listener(""),
        listener("").replace("127.0.0.1:0", "127.0.0.2:0")
    ))
    .await;
    let (_a, _) = Client::connect(relay.addrs[0]).await;
    let (_b, _) = Client::connect(relay.addrs[1]).await;
    let (greeting, mut reader) = greeting_from(relay.addrs[1], None).await;
    assert!(
        greeting.starts_with("421 4.7.0 relay.test Too many connections"),
        "{greeting}"
    );
    assert!(closed(&mut reader).await);
    relay.stop().await;
}

#[tokio::test]
async fn messages_per_connection_are_limited() {
    let relay = InboundRelay::start(&listener("max_messages_per_connection = 2")).await;
    let (mut c, _) = Client::connect(relay.addr()).await;
    c.cmd("EHLO batch").await;
    for i in 0..2 {
        assert!(
            c.cmd("MAIL FROM:<app@contoso.com>")
                .await
                .starts_with("250")
        );
        assert!(
            c.cmd(&format!("RCPT TO:<r{i}@example.com>"))
                .await
                .starts_with("250")
        );
        assert!(c.cmd("DATA").await.starts_with("354"));
        c.send(b"Subject: batch\r\n\r\nx\r\n.\r\n").await;
        assert!(c.reply().await.starts_with("250 2.0.0"));
    }
    let third = c.cmd("MAIL FROM:<app@contoso.com>").await;
    assert!(
        third.starts_with("421 4.7.0 relay.test Too many messages in this connection"),
        "{third}"
    );
    assert!(c.closed().await);
    assert_eq!(relay.wait_outbox(2).await.len(), 2);
    // A new connection may send again.
    let (mut c, _) = Client::connect(relay.addr()).await;
    c.cmd("EHLO batch").await;
    assert!(
        c.cmd("MAIL FROM:<app@contoso.com>")
            .await
            .starts_with("250")
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_busy_session_still_ends_at_session_timeout() {
    let relay = InboundRelay::start(&listener("session_timeout = \"2s\"")).await;
    let started = Instant::now();
    let (mut c, _) = Client::connect(relay.addr()).await;
    c.cmd("EHLO chatty").await;
    let last = loop {
        let reply = c.cmd("NOOP").await;
        if !reply.starts_with("250") {
            break reply;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        last.starts_with("421 4.4.2 Session time limit exceeded"),
        "{last}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    assert!(c.closed().await);
    relay.stop().await;
}

/// Slowloris: one byte every 200 ms never completes a command line; the command timeout counts from
/// the start of the wait, so the client is cut after about 1 s, not kept forever.
#[tokio::test]
async fn a_client_dribbling_a_command_is_cut_by_the_command_timeout() {
    let relay = InboundRelay::start(&format!(
        "{}[limits]\ncommand_timeout = \"1s\"\n",
        listener("")
    ))
    .await;
    let stream = TcpStream::connect(relay.addr()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut banner = String::new();
    reader.read_line(&mut banner).await.unwrap();
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        for byte in b"NOOP and then some more bytes that never end with a line feed"
            .iter()
            .cycle()
        {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .expect("cut within 5 s")
        .unwrap();
    let elapsed = started.elapsed();
    assert!(line.starts_with("421 4.4.2"), "{line}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert!(closed(&mut reader).await);
    dribble.abort();
    relay.stop().await;
}

/// Pipelined commands that arrive complete do not count against the next command's time.
#[tokio::test]
async fn the_command_timeout_restarts_after_each_complete_command() {
    let relay = InboundRelay::start(&format!(
        "{}[limits]\ncommand_timeout = \"2s\"\n",
        listener("")
    ))
    .await;
    let (mut c, _) = Client::connect(relay.addr()).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(c.cmd("NOOP").await.starts_with("250"));
    }
    relay.stop().await;
}
