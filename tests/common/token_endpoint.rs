//! A mock Microsoft identity platform (Entra ID v2.0 endpoints) over HTTPS with a test CA, for the
//! OAuth tests: it plays `login.microsoftonline.com` on 127.0.0.1.
//!
//! - `POST /{tenant}/oauth2/v2.0/token` with
//!   - `grant_type=client_credentials` and `client_secret`, or a JWT `client_assertion` (verified: RS256
//!     signature with the app certificate's public key, `x5t`/`x5t#S256`, `aud` = this URL,
//!     `iss` = `sub` = client id, `nbf`/`exp`, a `jti` not seen before);
//!   - `grant_type=refresh_token` (tokens it issued; rotated on use when `rotate_refresh_tokens`);
//!   - `grant_type=urn:ietf:params:oauth:grant-type:device_code` (`authorization_pending` for the
//!     first `pending_polls` polls, then tokens);
//! - `POST /{tenant}/oauth2/v2.0/devicecode`.
//!
//! It issues random JWT-shaped access tokens of `token_len` bytes (Microsoft's are over 2,000, which
//! puts the XOAUTH2 line over 2,500) with `expires_in`, and adds each to a [`ValidTokens`] set the test
//! upstream checks. Errors are shaped like Entra's (`{"error": "invalid_client", "error_description":
//! "AADSTS7000215: Invalid client secret provided. ...", "error_codes": [7000215], ...}`). Every request
//! is recorded; [`EndpointConfig::fail`] makes it fail on purpose.

use super::certs::TestPki;
use super::upstream::ValidTokens;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use smarthost::config::{OAuthConfig, OAuthGrant, Secret};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

pub const TENANT: &str = "contoso.onmicrosoft.com";
pub const CLIENT_ID: &str = "8c1d7d2e-4b1a-4f2e-9a57-3d7b2f0c9e11";
/// A made-up client secret in the shape of Entra's (40 characters with `~` and `.`).
pub const CLIENT_SECRET: &str = "Qm8~x2Vf.TestOnlySecret_9kLp3Zr7sWd1NbYc";

/// A 2048-bit RSA key made for these tests only (Entra certificate credentials are RSA; ring, which
/// rcgen uses here, cannot generate RSA keys). It protects nothing.
const TEST_APP_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDG7RbhOOiJZ37F
+debyCtw9mKdF0Kv4NPvFR99Sn8DmEUXu69j5kQZiEh0HlndfRp+mVLQiWlXiKQj
PwFFF6wrGk8EhObDSmYPr9I6Eg4Fs2FKcZIY9Yh/u5i9OnMQMeGrNUJGMG638JFh
0pkHv1K1gbdAwKlfqIZwWRo+XrkUs2aZEmZev44DrzezbXyUTvrzbnPXjz81LLHj
cPV6rX8fEOqf2xEWfga39rvwzpLqZCNmtspDmhc0E4T5IwNUPvx6Edz+MY3/+drX
uTL4QMAx4VBl5Cla6/4OcGrl+UCFv6hgMD8UpPNI4f7X47vttsiVBo5xPxhlRsM9
IAcuxRQNAgMBAAECggEAV+FY6MHD1SQAOQUBj+Qz8NEgSqcCgoGQD0ClKyw0hYmJ
CI2VU8xfzGnNHGNmLve8My6YC+GQxKdsX9fPP09Qc7BJNUVjTuY4xXhWpungAPu4
oPMgaF9cYJWnSf2e5Ios2H6MW0a9OwyPpYgsq+QFbYMzSmtyx/xC/DIY6nHdUPuS
vO89cgP94NRlZzPuKbJV2I3XtB9b03cxfWTuKMO2L5p6yk9EarGAZXYWhUDXzpck
fV4ebof9xZpW8xPAEH+TPsD8csUzZ7aFFMIx/2d9mDS6BNSgRYeSfzJ44xI75fCF
OSzE9tOo/3ISTiRI1em2TZjikymlefbBqlF2yAbPjwKBgQDvXfsjKqZXXTcVs7Bz
4xPVedAYqpnq2Aj03aI37mg3KtB9k2VIVDxBBWcF8lX/JisIK9+C2kZJZ09pMS40
0UunCRpb3Kby96ZPLsfj5MkarmO9yEm3tblIYqxaJhFp4EW++SIaEIG1ik5/f0/b
rUBE7hRXKPGZoTxQj8X8v5ymDwKBgQDUv7e5mvse1NEk09tQlykD7eK9CjnjEUmp
kuNOfWUeDHtdHNpP5r6Tx6nBYS0dMeerknXgYd/J8sStqaX4NEAdupn9KS8fvnAy
F3vUtbOmGZKtP1h2qEouQbgDUFAvGdWKZ/Pp0nP2RMWJc1rkuoOW+4p+Ftw+pqXQ
stmwO1+gIwKBgQDGA8IIcnTO2u8BxfdXtucmdzG95guUKgkmv949VLzjvkhhSbjE
n+KEi3qRgcrAWwvII7sv3W+9s3gO9j9aNDXYRYCHs75sSpBK+tEjZpUyvEcIrZLG
Jc/T4MThgpJvOreX5zLdyv/ydSrA8EnY2bbMDwPGorlStP5XSsincL+e4wKBgQCi
Wdt+jEJueMFRdUq76V6nXPXWhOM/4IVyHmHQF+j+UVAi8k23A8MTSx7EL8AZs2ez
ioThwk7g8Z4dWIULL/Rtu2SfyLnpY46C62DYJgD+FC3Wf6ymgC57tjMSdEt8Zh6L
DGEaYjuUB08nYRxPx/V7VmGNbyyLsuh+pr1wux5yOQKBgQCG6s9DJnszDwQwynIQ
eipGpBLqRFo14OPgQjYYJTkHR5XQlCrkYl7L9bl1HvxYOqi+jR6Dln8+qrpbGF4V
4oWu9WMDSLvb5thM9MAc9JfaPQ4PLg3ChS7+WzTthSF4b43bUy73Kkf4cBKyrYex
UURGVsGnbbZuF2xjGTb/t2366w==
-----END PRIVATE KEY-----
";

/// The app's certificate credential: a self-signed certificate for [`TEST_APP_KEY`], written to PEM
/// files for `certificate_file` / `private_key_file`.
pub struct AppCertificate {
    pub dir: tempfile::TempDir,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub der: Vec<u8>,
    /// The RSAPublicKey DER, for verifying signatures.
    pub public_key: Vec<u8>,
}

impl AppCertificate {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::from_pem(TEST_APP_KEY).expect("test RSA key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "smarthost test app");
        let cert = params.self_signed(&key).expect("app certificate");
        let dir = tempfile::tempdir().expect("temporary directory");
        let certificate = dir.path().join("app.crt");
        let private_key = dir.path().join("app.key");
        std::fs::write(&certificate, cert.pem()).unwrap();
        std::fs::write(&private_key, TEST_APP_KEY).unwrap();
        AppCertificate {
            certificate,
            private_key,
            der: cert.der().to_vec(),
            public_key: key.public_key_raw().to_vec(),
            dir,
        }
    }

    pub fn x5t(&self) -> String {
        B64URL.encode(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &self.der,
        ))
    }

    pub fn x5t_s256(&self) -> String {
        B64URL.encode(ring::digest::digest(&ring::digest::SHA256, &self.der))
    }
}

/// A failure to answer with, whatever the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// `401 invalid_client` AADSTS7000215 (a wrong or rotated client secret).
    InvalidClient,
    /// `500` with a body that is not JSON.
    ServerError,
}

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub client_id: String,
    /// The secret `client_credentials` must carry; `None`: secrets are refused.
    pub client_secret: Option<String>,
    /// Verify JWT client assertions against this certificate: `(der, RSAPublicKey der)`.
    pub certificate: Option<(Vec<u8>, Vec<u8>)>,
    /// `expires_in` of issued access tokens.
    pub expires_in: u64,
    /// Length of issued access tokens.
    pub token_len: usize,
    pub fail: Option<Fail>,
    /// Wait this long before answering a token request (to let concurrent callers pile up).
    pub delay: Duration,
    /// Device code: answer `authorization_pending` this many times before the tokens.
    pub pending_polls: u32,
    /// Device code: `interval` in the devicecode answer.
    pub device_interval: u64,
    /// Device code: the person declines the sign-in.
    pub decline: bool,
    /// The signed-in person's UPN (delegated tokens carry it).
    pub account: String,
    /// A refresh token is good for one use (its successor comes with the answer).
    pub rotate_refresh_tokens: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            client_id: CLIENT_ID.into(),
            client_secret: Some(CLIENT_SECRET.into()),
            certificate: None,
            expires_in: 3599,
            token_len: 2600,
            fail: None,
            delay: Duration::ZERO,
            pending_polls: 0,
            device_interval: 1,
            decline: false,
            account: "scanner@contoso.example".into(),
            rotate_refresh_tokens: true,
        }
    }
}

impl EndpointConfig {
    pub fn with_certificate(mut self, cert: &AppCertificate) -> Self {
        self.certificate = Some((cert.der.clone(), cert.public_key.clone()));
        self
    }
}

/// One request as received (form fields decoded; the test may look at secrets, nothing else does).
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub path: String,
    pub form: BTreeMap<String, String>,
    /// The HTTP status answered.
    pub status: u16,
}

impl TokenRequest {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Issued {
    access: Vec<String>,
    /// Refresh tokens that are still good.
    refresh: HashSet<String>,
    all_refresh: Vec<String>,
    /// device_code → polls left that answer `authorization_pending`.
    device_codes: HashMap<String, u32>,
    assertion_ids: HashSet<String>,
}

struct State {
    config: Mutex<EndpointConfig>,
    valid: ValidTokens,
    requests: Mutex<Vec<TokenRequest>>,
    issued: Mutex<Issued>,
    base_url: String,
}

/// The running endpoint. Dropping it stops it.
pub struct TokenEndpoint {
    pub addr: SocketAddr,
    pub pki: TestPki,
    state: Arc<State>,
    task: AbortHandle,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenEndpoint {
    /// Issued tokens go into `valid` (share it with the upstream: `UpstreamConfig::with_xoauth2`).
    pub async fn start(config: EndpointConfig, valid: &ValidTokens) -> TokenEndpoint {
        let pki = TestPki::new();
        let acceptor = TlsAcceptor::from(pki.server_config());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            config: Mutex::new(config),
            valid: valid.clone(),
            requests: Mutex::new(Vec::new()),
            issued: Mutex::new(Issued::default()),
            base_url: format!("https://127.0.0.1:{}", addr.port()),
        });
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve_connection(state, tls).await;
                    }
                });
            }
        });
        TokenEndpoint {
            addr,
            pki,
            state,
            task: task.abort_handle(),
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/{TENANT}/oauth2/v2.0/token", self.state.base_url)
    }

    pub fn device_url(&self) -> String {
        format!("{}/{TENANT}/oauth2/v2.0/devicecode", self.state.base_url)
    }

    pub fn ca_path(&self) -> &Path {
        self.pki.ca_path()
    }

    pub fn configure(&self, change: impl FnOnce(&mut EndpointConfig)) {
        change(&mut self.state.config.lock().unwrap());
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests to the token URL (not the device-code URL).
    pub fn token_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with("/token"))
            .count()
    }

    /// Every access and refresh token issued so far (to check that none leaked anywhere).
    pub fn issued_tokens(&self) -> Vec<String> {
        let issued = self.state.issued.lock().unwrap();
        issued
            .access
            .iter()
            .chain(&issued.all_refresh)
            .cloned()
            .collect()
    }

    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().access.clone()
    }

    /// A refresh token as if a person had signed in before.
    pub fn add_refresh_token(&self) -> String {
        let token = refresh_token();
        let mut issued = self.state.issued.lock().unwrap();
        issued.refresh.insert(token.clone());
        issued.all_refresh.push(token.clone());
        token
    }

    /// Whether this refresh token is still accepted.
    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.state.issued.lock().unwrap().refresh.contains(token)
    }

    /// An app-only configuration with the client secret (scope for SMTP).
    pub fn secret_config(&self) -> OAuthConfig {
        self.oauth_config(OAuthGrant::ClientSecret(Secret::new(CLIENT_SECRET)))
    }

    /// An app-only configuration with the certificate.
    pub fn certificate_config(&self, cert: &AppCertificate) -> OAuthConfig {
        self.oauth_config(OAuthGrant::ClientCertificate {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        })
    }

    /// A delegated configuration keeping its refresh token in `token_file`.
    pub fn device_code_config(&self, token_file: &Path) -> OAuthConfig {
        OAuthConfig {
            scope: "https://outlook.office.com/SMTP.Send offline_access".into(),
            ..self.oauth_config(OAuthGrant::DeviceCode {
                device_endpoint: self.device_url(),
                token_file: token_file.to_path_buf(),
            })
        }
    }

    fn oauth_config(&self, grant: OAuthGrant) -> OAuthConfig {
        OAuthConfig {
            tenant: TENANT.into(),
            client_id: CLIENT_ID.into(),
            grant,
            token_endpoint: self.token_url(),
            scope: "https://outlook.office365.com/.default".into(),
            ca_file: Some(self.ca_path().to_path_buf()),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn random_text(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn refresh_token() -> String {
    format!("0.AXEA{}", random_text(300))
}

/// HTTP/1.1, one request per connection (answers say `Connection: close`).
async fn serve_connection<S>(state: Arc<State>, stream: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).await?;
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let form = parse_form(&String::from_utf8_lossy(&body));

    let (status, answer) = if method != "POST" {
        (
            405,
            json!({"error": "invalid_request", "error_description": "AADSTS900561: The endpoint only accepts POST requests."}),
        )
    } else {
        let delay = state.config.lock().unwrap().delay;
        if path.ends_with("/oauth2/v2.0/token") {
            tokio::time::sleep(delay).await;
            token(&state, path, &form)
        } else if path.ends_with("/oauth2/v2.0/devicecode") {
            devicecode(&state, &form)
        } else {
            (404, json!({"error": "not_found"}))
        }
    };
    state.requests.lock().unwrap().push(TokenRequest {
        path: path.to_string(),
        form,
        status,
    });
    let (content_type, body) = if status == 500 && answer.is_null() {
        (
            "text/html",
            "<html><body>Internal Server Error</body></html>".to_string(),
        )
    } else {
        ("application/json; charset=utf-8", answer.to_string())
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store, no-cache\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let stream = reader.get_mut();
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// `application/x-www-form-urlencoded` → fields.
fn parse_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An Entra error answer.
fn entra_error(status: u16, error: &str, code: u64, description: &str) -> (u16, Value) {
    let trace = "0d1c4f6a-6c2b-4a8e-9f1d-3b7e2a9c5d00";
    (
        status,
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: 7f3e2d1c-0b9a-4c8d-8e7f-6a5b4c3d2e1f\r\nTimestamp: 2026-01-15 10:00:00Z"
            ),
            "error_codes": [code],
            "timestamp": "2026-01-15 10:00:00Z",
            "trace_id": trace,
            "correlation_id": "7f3e2d1c-0b9a-4c8d-8e7f-6a5b4c3d2e1f",
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

fn invalid_secret(client_id: &str) -> (u16, Value) {
    entra_error(
        401,
        "invalid_client",
        7000215,
        &format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
        ),
    )
}

fn token(state: &State, path: &str, form: &BTreeMap<String, String>) -> (u16, Value) {
    let config = state.config.lock().unwrap().clone();
    match config.fail {
        Some(Fail::InvalidClient) => return invalid_secret(&config.client_id),
        Some(Fail::ServerError) => return (500, Value::Null),
        None => {}
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    if field("client_id") != config.client_id {
        return entra_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory '{TENANT}'.",
                field("client_id")
            ),
        );
    }
    match field("grant_type") {
        "client_credentials" => {
            if let Err(refusal) = check_client(state, &config, path, form) {
                return refusal;
            }
            let scope = field("scope");
            if !scope.ends_with("/.default") {
                return entra_error(
                    400,
                    "invalid_scope",
                    1002012,
                    &format!(
                        "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                    ),
                );
            }
            (200, issue(state, &config, None, false))
        }
        "refresh_token" => {
            let given = field("refresh_token");
            let mut issued = state.issued.lock().unwrap();
            if !issued.refresh.contains(given) {
                drop(issued);
                return entra_error(
                    400,
                    "invalid_grant",
                    700082,
                    "The refresh token has expired due to inactivity. The token was issued on 2025-10-01T00:00:00Z and was inactive for 90.00:00:00.",
                );
            }
            if config.rotate_refresh_tokens {
                issued.refresh.remove(given);
            }
            drop(issued);
            (200, issue(state, &config, Some(&config.account), true))
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let code = field("device_code");
            let mut issued = state.issued.lock().unwrap();
            let Some(pending) = issued.device_codes.get_mut(code) else {
                drop(issued);
                return entra_error(
                    400,
                    "invalid_grant",
                    70000,
                    "The provided value for the input parameter 'device_code' is not valid.",
                );
            };
            if config.decline {
                return entra_error(
                    400,
                    "authorization_declined",
                    70000,
                    "The user declined the authorization request.",
                );
            }
            if *pending > 0 {
                *pending -= 1;
                return entra_error(
                    400,
                    "authorization_pending",
                    70016,
                    "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                );
            }
            issued.device_codes.remove(code);
            drop(issued);
            (200, issue(state, &config, Some(&config.account), true))
        }
        other => entra_error(
            400,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
        ),
    }
}

/// Client credentials: the secret, or a verified client assertion.
fn check_client(
    state: &State,
    config: &EndpointConfig,
    path: &str,
    form: &BTreeMap<String, String>,
) -> Result<(), (u16, Value)> {
    if let Some(secret) = form.get("client_secret") {
        return match &config.client_secret {
            Some(expected) if expected == secret => Ok(()),
            _ => Err(invalid_secret(&config.client_id)),
        };
    }
    let Some(assertion) = form.get("client_assertion") else {
        return Err(entra_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    let bad = |code: u64, text: &str| entra_error(401, "invalid_client", code, text);
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err(bad(50027, "Invalid client_assertion_type."));
    }
    let Some((der, public_key)) = &config.certificate else {
        return Err(bad(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found.]",
        ));
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(bad(50027, "JWT token is invalid or malformed."));
    };
    let decode =
        |part: &str| -> Option<Value> { serde_json::from_slice(&B64URL.decode(part).ok()?).ok() };
    let (Some(header), Some(claims), Ok(signature)) =
        (decode(header), decode(claims), B64URL.decode(signature))
    else {
        return Err(bad(50027, "JWT token is invalid or malformed."));
    };
    let x5t = B64URL.encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        der,
    ));
    let x5t_s256 = B64URL.encode(ring::digest::digest(&ring::digest::SHA256, der));
    if header["alg"] != "RS256"
        || header["x5t"] != x5t.as_str()
        || header["x5t#S256"] != x5t_s256.as_str()
    {
        return Err(bad(
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application.",
        ));
    }
    let signed = &assertion[..assertion.rfind('.').unwrap()];
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(signed.as_bytes(), &signature)
    .map_err(|_| bad(700027, "Client assertion failed signature validation."))?;
    let audience = format!("{}{path}", state.base_url);
    let now = unix_now();
    let number = |name: &str| claims[name].as_u64().unwrap_or(0);
    if claims["aud"] != audience.as_str() {
        return Err(bad(
            700021,
            &format!(
                "Client assertion audience claim does not match Realm issuer. Review the documentation at https://aka.ms/certCredentials . Expected {audience}"
            ),
        ));
    }
    if claims["iss"] != config.client_id.as_str() || claims["sub"] != config.client_id.as_str() {
        return Err(bad(
            700023,
            "Client assertion issuer or subject is not the client id.",
        ));
    }
    if number("exp") <= now || number("nbf") > now + 300 || number("exp") > now + 3600 {
        return Err(bad(
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    let jti = claims["jti"].as_str().unwrap_or("");
    if jti.is_empty()
        || !state
            .issued
            .lock()
            .unwrap()
            .assertion_ids
            .insert(jti.to_string())
    {
        return Err(bad(
            700025,
            "Client assertion jti claim is missing or has been used before (replay).",
        ));
    }
    Ok(())
}

/// A token answer; delegated answers carry a refresh token and the account.
fn issue(state: &State, config: &EndpointConfig, account: Option<&str>, refresh: bool) -> Value {
    let expires_at = unix_now() + config.expires_in;
    let header = B64URL.encode(r#"{"typ":"JWT","alg":"RS256","x5t":"mock"}"#);
    let mut claims = json!({
        "aud": "https://outlook.office.com",
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "appid": config.client_id,
        "exp": expires_at,
    });
    if let Some(account) = account {
        claims["upn"] = json!(account);
    }
    let base = format!("{header}.{}", B64URL.encode(claims.to_string()));
    let signature_len = config.token_len.saturating_sub(base.len() + 1).max(16);
    let access = format!("{base}.{}", random_text(signature_len));
    state.valid.insert(&access, expires_at);
    let mut issued = state.issued.lock().unwrap();
    issued.access.push(access.clone());
    let mut answer = json!({
        "token_type": "Bearer",
        "expires_in": config.expires_in,
        "ext_expires_in": config.expires_in,
        "access_token": access,
    });
    if refresh {
        let token = refresh_token();
        issued.refresh.insert(token.clone());
        issued.all_refresh.push(token.clone());
        answer["refresh_token"] = json!(token);
        answer["scope"] = json!("https://outlook.office.com/SMTP.Send");
    }
    answer
}

fn devicecode(state: &State, form: &BTreeMap<String, String>) -> (u16, Value) {
    let config = state.config.lock().unwrap().clone();
    if form.get("client_id") != Some(&config.client_id) {
        return entra_error(
            400,
            "unauthorized_client",
            700016,
            "Application was not found in the directory.",
        );
    }
    if !form
        .get("scope")
        .is_some_and(|s| s.split_whitespace().any(|s| s == "offline_access"))
    {
        return entra_error(
            400,
            "invalid_scope",
            70011,
            "The scope must include offline_access for this test.",
        );
    }
    let device_code = format!("DAQABAAEAAAD{}", random_text(120));
    let user_code = random_text(9).to_ascii_uppercase();
    state
        .issued
        .lock()
        .unwrap()
        .device_codes
        .insert(device_code.clone(), config.pending_polls);
    (
        200,
        json!({
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": "https://microsoft.com/devicelogin",
            "expires_in": 900,
            "interval": config.device_interval,
            "message": format!("To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code {user_code} to authenticate."),
        }),
    )
}
