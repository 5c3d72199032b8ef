//! Stand-ins for `smarthost test upstream` and `smarthost doctor` tests: a CA with an expired server
//! certificate (for a TLS server the client must refuse), and configuration files for routes to
//! local upstreams.

use super::certs::{pem, pem_file, server_params, test_ca};
use rcgen::{KeyPair, date_time_ymd};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A CA (as a `ca_file`) and a certificate for `localhost` / 127.0.0.1 signed by it that expired in
/// 2021, with its key.
pub struct ExpiredPki {
    pub ca_file: tempfile::NamedTempFile,
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl ExpiredPki {
    pub fn new() -> Self {
        let (ca_cert, issuer) = test_ca("smarthost expired test CA");
        let key = KeyPair::generate().expect("server key");
        let mut params = server_params(&["localhost", "127.0.0.1"]);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let ca_file = pem_file("smarthost-expired-ca-", &ca_cert.pem());
        ExpiredPki {
            ca_file,
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    pub fn ca_path(&self) -> &Path {
        self.ca_file.path()
    }

    /// A TLS server configuration presenting the expired certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .expect("server certificate and key");
        Arc::new(config)
    }

    /// The certificate and key as PEM files in `dir` (e.g. for a listener): (certificate, key).
    pub fn write_pem(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("expired.crt");
        let key = dir.join("expired.key");
        std::fs::write(&cert, pem("CERTIFICATE", self.cert.as_ref())).expect("write cert");
        std::fs::write(&key, pem("PRIVATE KEY", self.key.secret_pkcs8_der())).expect("write key");
        (cert, key)
    }
}

/// A configuration file text: `data_dir`, one plain listener on 127.0.0.1, and `routes` as given.
pub fn config_text(data_dir: &Path, routes: &str) -> String {
    format!(
        "data_dir = \"{}\"\nhostname = \"relay.test\"\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
         relay_from = [\"127.0.0.1\"]\n\n{routes}",
        data_dir.display()
    )
}

/// A route to 127.0.0.1:`port` trusting `ca`, with short time limits; `extra` lines are added to
/// the `[[route]]` table (`tls = ...`, `mode = ...`), `auth` (if any) is the `[route.auth]` table.
pub fn route_text(name: &str, port: u16, ca: &Path, extra: &str, auth: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\ndomains = [\"*\"]\nhost = \"127.0.0.1\"\nport = {port}\n\
         ca_file = \"{}\"\nconnect_timeout = \"3s\"\ncommand_timeout = \"5s\"\n{extra}\n{auth}\n",
        ca.display()
    )
}

/// `[route.auth]` with PLAIN, `user` and a password file written into `dir`.
pub fn plain_auth(dir: &Path, user: &str, password: &str) -> String {
    let file = dir.join(format!("{user}.pass"));
    std::fs::write(&file, format!("{password}\n")).expect("write password file");
    format!(
        "[route.auth]\nmechanism = \"plain\"\nusername = \"{user}\"\npassword_file = \"{}\"\n",
        file.display()
    )
}

/// A local port where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    port
}
