//! A raw SMTP client for tests that can switch to TLS mid-session (STARTTLS) or start in it
//! (implicit TLS), with rustls or with OpenSSL (which can still speak TLS 1.0 and 1.1).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct TlsClient {
    io: BufReader<Box<dyn Io>>,
}

/// A rustls client configuration trusting the CA in `ca_pem` (TLS 1.2 and 1.3).
pub fn rustls_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

async fn rustls_handshake(
    stream: Box<dyn Io>,
    ca_pem: &str,
) -> io::Result<tokio_rustls::client::TlsStream<Box<dyn Io>>> {
    let connector = tokio_rustls::TlsConnector::from(rustls_config(ca_pem));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, stream))
        .await
        .map_err(|_| io::Error::other("TLS handshake timed out"))?
}

impl TlsClient {
    /// Plain TCP; returns the banner.
    pub async fn connect(addr: SocketAddr) -> (TlsClient, String) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut client = TlsClient::over(Box::new(stream));
        let banner = client.reply().await;
        (client, banner)
    }

    /// Implicit TLS with rustls; returns the banner read over TLS.
    pub async fn connect_implicit(addr: SocketAddr, ca_pem: &str) -> (TlsClient, String) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let tls = rustls_handshake(Box::new(stream), ca_pem)
            .await
            .expect("implicit TLS handshake");
        let mut client = TlsClient::over(Box::new(tls));
        let banner = client.reply().await;
        (client, banner)
    }

    fn over(io: Box<dyn Io>) -> TlsClient {
        TlsClient {
            io: BufReader::new(io),
        }
    }

    /// Bytes received but not yet read as replies.
    pub fn buffered(&self) -> usize {
        self.io.buffer().len()
    }

    fn into_inner(self) -> Box<dyn Io> {
        assert_eq!(
            self.buffered(),
            0,
            "the server sent something in plaintext after its STARTTLS reply"
        );
        self.io.into_inner()
    }

    /// The TLS handshake with rustls over the current connection (after a `220` to STARTTLS).
    pub async fn upgrade_rustls(self, ca_pem: &str) -> io::Result<TlsClient> {
        let tls = rustls_handshake(self.into_inner(), ca_pem).await?;
        Ok(TlsClient::over(Box::new(tls)))
    }

    /// `STARTTLS`, `220`, then the rustls handshake.
    pub async fn starttls(mut self, ca_pem: &str) -> TlsClient {
        let reply = self.cmd("STARTTLS").await;
        assert!(reply.starts_with("220 2.0.0"), "{reply}");
        self.upgrade_rustls(ca_pem).await.expect("TLS handshake")
    }

    /// The TLS handshake with OpenSSL, limited to the protocol versions `min..=max` (security level
    /// 0, so that TLS 1.0 and 1.1 are possible); returns the client and the version negotiated.
    #[cfg(feature = "legacy-tls")]
    pub async fn upgrade_openssl(
        self,
        ca: &std::path::Path,
        min: openssl::ssl::SslVersion,
        max: openssl::ssl::SslVersion,
    ) -> io::Result<(TlsClient, String)> {
        use openssl::ssl::{SslConnector, SslMethod};
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(io::Error::other)?;
        builder.set_ca_file(ca).map_err(io::Error::other)?;
        builder
            .set_min_proto_version(Some(min))
            .map_err(io::Error::other)?;
        builder
            .set_max_proto_version(Some(max))
            .map_err(io::Error::other)?;
        builder
            .set_cipher_list("DEFAULT:@SECLEVEL=0")
            .map_err(io::Error::other)?;
        let ssl = builder
            .build()
            .configure()
            .map_err(io::Error::other)?
            .into_ssl("localhost")
            .map_err(io::Error::other)?;
        let mut stream =
            tokio_openssl::SslStream::new(ssl, self.into_inner()).map_err(io::Error::other)?;
        tokio::time::timeout(
            Duration::from_secs(10),
            std::pin::Pin::new(&mut stream).connect(),
        )
        .await
        .map_err(|_| io::Error::other("TLS handshake timed out"))?
        .map_err(|e| io::Error::other(e.to_string()))?;
        let version = stream.ssl().version_str().to_string();
        Ok((TlsClient::over(Box::new(stream)), version))
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// One whole reply (all its lines), e.g. "250-a\n250 b".
    pub async fn reply(&mut self) -> String {
        self.try_reply(Duration::from_secs(10))
            .await
            .expect("a reply in time")
    }

    /// A reply within `wait`, or `None` (nothing came, or the connection closed).
    pub async fn try_reply(&mut self, wait: Duration) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match tokio::time::timeout(wait, self.io.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
            let line = line.trim_end().to_string();
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

    /// Whether the server closed the connection (EOF or reset) within `wait`, whatever it sent
    /// before (a TLS alert, say).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut rest = Vec::new();
        tokio::time::timeout(wait, self.io.read_to_end(&mut rest))
            .await
            .is_ok()
    }
}
