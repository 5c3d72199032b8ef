//! The rustls backend (without the `legacy-tls` feature): TLS 1.2 and 1.3 only.

use super::TlsInfo;
use super::pem::Pair;
use crate::config::TlsVersion;
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;

pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

pub(super) struct Acceptor(tokio_rustls::TlsAcceptor);

pub(super) fn acceptor(pair: &Pair, min: TlsVersion) -> Result<Acceptor, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls10 | TlsVersion::Tls11 => {
            return Err(super::LEGACY_UNAVAILABLE.to_string());
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(pair.chain.clone(), pair.key.clone_key())
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not belong to the certificate".to_string()
            }
            other => format!("unusable certificate or key: {other}"),
        })?;
    Ok(Acceptor(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

pub(super) async fn accept(
    acceptor: &Acceptor,
    tcp: TcpStream,
) -> io::Result<(TlsStream, TlsInfo)> {
    let stream = acceptor.0.accept(tcp).await?;
    let (_, connection) = stream.get_ref();
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let cipher = connection
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    Ok((stream, TlsInfo { version, cipher }))
}
