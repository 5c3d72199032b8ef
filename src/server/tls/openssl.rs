//! The OpenSSL backend (feature `legacy-tls`, OpenSSL built from source): TLS 1.0 to 1.3.

use super::TlsInfo;
use super::pem::Pair;
use crate::config::TlsVersion;
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslOptions, SslVersion};
use openssl::x509::X509;
use std::io;
use std::pin::Pin;
use tokio::net::TcpStream;

pub type TlsStream = tokio_openssl::SslStream<TcpStream>;

pub(super) struct Acceptor(SslAcceptor);

/// For `min_tls` 1.0 and 1.1: Mozilla's former "intermediate" list, which still has the CBC and
/// 3DES suites of the devices that need these versions, at security level 0. OpenSSL 3 refuses
/// TLS 1.0/1.1 at any higher level (their handshake signatures use SHA-1 and MD5). With `min_tls`
/// 1.2 or 1.3 the current intermediate configuration (AEAD suites with forward secrecy) is kept.
const LEGACY_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
     ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
     ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:\
     ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:\
     ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES256-SHA:\
     ECDHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA256:DHE-RSA-AES128-SHA:DHE-RSA-AES256-SHA256:\
     DHE-RSA-AES256-SHA:ECDHE-ECDSA-DES-CBC3-SHA:ECDHE-RSA-DES-CBC3-SHA:EDH-RSA-DES-CBC3-SHA:\
     AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA:\
     DES-CBC3-SHA:!DSS:@SECLEVEL=0";

pub(super) fn acceptor(pair: &Pair, min: TlsVersion) -> Result<Acceptor, String> {
    let failed = |e: openssl::error::ErrorStack| format!("TLS set-up failed: {e}");
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(failed)?;
    let version = match min {
        TlsVersion::Tls10 => SslVersion::TLS1,
        TlsVersion::Tls11 => SslVersion::TLS1_1,
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    };
    if min < TlsVersion::Tls12 {
        builder.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
        builder.set_cipher_list(LEGACY_CIPHERS).map_err(failed)?;
    }
    builder
        .set_min_proto_version(Some(version))
        .map_err(failed)?;

    let not_x509 = |e| format!("not a certificate OpenSSL can use: {e}");
    let leaf = X509::from_der(pair.chain[0].as_ref()).map_err(not_x509)?;
    builder.set_certificate(&leaf).map_err(failed)?;
    for extra in &pair.chain[1..] {
        let extra = X509::from_der(extra.as_ref()).map_err(not_x509)?;
        builder.add_extra_chain_cert(extra).map_err(failed)?;
    }
    let key = PKey::private_key_from_der(pair.key.secret_der())
        .map_err(|e| format!("not a private key OpenSSL can use: {e}"))?;
    builder
        .set_private_key(&key)
        .map_err(|_| "the private key does not belong to the certificate".to_string())?;
    builder
        .check_private_key()
        .map_err(|_| "the private key does not belong to the certificate".to_string())?;
    Ok(Acceptor(builder.build()))
}

pub(super) async fn accept(
    acceptor: &Acceptor,
    tcp: TcpStream,
) -> io::Result<(TlsStream, TlsInfo)> {
    let ssl = Ssl::new(acceptor.0.context()).map_err(io::Error::other)?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(io::Error::other)?;
    Pin::new(&mut stream).accept().await.map_err(|e| {
        let text = match e.ssl_error() {
            Some(stack) => stack.to_string(),
            None => e.to_string(),
        };
        io::Error::other(text)
    })?;
    let ssl = stream.ssl();
    let info = TlsInfo {
        version: ssl.version_str().to_string(),
        cipher: ssl
            .current_cipher()
            .map(|c| c.name().to_string())
            .unwrap_or_default(),
    };
    Ok((stream, info))
}
