//! A Microsoft Graph stand-in for integration tests: an HTTPS server on 127.0.0.1 (certificate from
//! [`TestPki`]) with `POST /v1.0/users/{mailbox}/sendMail` and an Entra ID token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`, client credentials with a client secret).
//!
//! ```ignore
//! let graph = GraphMock::start().await;
//! let route = graph.route();                       // a GraphRoute to it, trusting its CA
//! graph.script([GraphReply::throttled(Some(3))]);  // the next sendMail answers 429, then 202 again
//! // ... deliver ...
//! let sent = graph.wait_for_messages(1, Duration::from_secs(5)).await;
//! assert_eq!(sent[0].mime, expected_bytes);
//! ```
//!
//! sendMail checks what Graph checks, in Graph's order: the bearer token (issued by the token endpoint
//! or allowed with [`GraphMock::accept_token`]; else `401 InvalidAuthenticationToken`), then any scripted
//! answer, the mailbox (`404 ErrorInvalidUser`), `Content-Type: text/plain`, and the body as standard
//! base64 (`400 ErrorMimeContentInvalidBase64String`). Then it records the decoded MIME and answers
//! `202 Accepted` with a `request-id` header.

use super::certs::TestPki;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Form, OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use smarthost::config::{GraphRoute, OAuthConfig, OAuthGrant, Secret};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub const TENANT: &str = "contoso.example";
pub const CLIENT_ID: &str = "0b6f2a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
pub const CLIENT_SECRET: &str = "mock-client-secret~value";
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// The mailbox the mock knows from the start.
pub const MAILBOX: &str = "scanner@contoso.example";

/// A scripted answer to one sendMail request.
#[derive(Debug, Clone)]
pub struct GraphReply {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
}

impl GraphReply {
    pub fn accepted() -> Self {
        GraphReply {
            status: 202,
            retry_after: None,
            body: String::new(),
        }
    }

    /// Graph's error JSON with `code` and `message`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": {"request-id": "mock-error-request", "date": "2026-01-01T00:00:00"}
            }
        });
        GraphReply {
            status,
            retry_after: None,
            body: body.to_string(),
        }
    }

    pub fn throttled(retry_after: Option<u64>) -> Self {
        GraphReply {
            retry_after,
            ..Self::error(
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
            )
        }
    }

    pub fn unavailable(status: u16, retry_after: Option<u64>) -> Self {
        GraphReply {
            retry_after,
            ..Self::error(
                status,
                "ServiceNotAvailable",
                "The service is temporarily unavailable.",
            )
        }
    }

    pub fn unauthorized() -> Self {
        Self::error(
            401,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        )
    }

    /// A body that is not Graph's JSON (a gateway's HTML page).
    pub fn raw(status: u16, body: &str) -> Self {
        GraphReply {
            status,
            retry_after: None,
            body: body.to_string(),
        }
    }
}

/// A message Graph accepted.
#[derive(Debug, Clone)]
pub struct SentMail {
    pub mailbox: String,
    pub token: String,
    /// The decoded MIME.
    pub mime: Vec<u8>,
    pub request_id: String,
}

/// Any sendMail request and what it was answered.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The path as sent (percent-encoded).
    pub path: String,
    pub token: Option<String>,
    pub status: u16,
}

struct MockState {
    valid_tokens: Mutex<HashSet<String>>,
    mailboxes: Mutex<HashSet<String>>,
    script: Mutex<VecDeque<GraphReply>>,
    delay: Mutex<Duration>,
    messages: Mutex<Vec<SentMail>>,
    requests: Mutex<Vec<SendRequest>>,
    tokens_issued: AtomicUsize,
    next_request: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    received: tokio::sync::Notify,
}

pub struct GraphMock {
    addr: SocketAddr,
    pki: TestPki,
    state: Arc<MockState>,
    task: tokio::task::AbortHandle,
}

impl Drop for GraphMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GraphMock {
    pub async fn start() -> GraphMock {
        let pki = TestPki::new();
        let state = Arc::new(MockState {
            valid_tokens: Mutex::new(HashSet::new()),
            mailboxes: Mutex::new(HashSet::from([MAILBOX.to_string()])),
            script: Mutex::new(VecDeque::new()),
            delay: Mutex::new(Duration::ZERO),
            messages: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            tokens_issued: AtomicUsize::new(0),
            next_request: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            received: tokio::sync::Notify::new(),
        });
        let app = Router::new()
            .route("/v1.0/users/{mailbox}/sendMail", post(send_mail))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
            .with_state(Arc::clone(&state));
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(pki.server_config()),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
        .abort_handle();
        GraphMock {
            addr,
            pki,
            state,
            task,
        }
    }

    /// `https://127.0.0.1:PORT/v1.0`
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}/v1.0", self.addr.port())
    }

    pub fn token_endpoint(&self) -> String {
        format!(
            "https://127.0.0.1:{}/{TENANT}/oauth2/v2.0/token",
            self.addr.port()
        )
    }

    pub fn ca_path(&self) -> &std::path::Path {
        self.pki.ca_path()
    }

    /// Client credentials with the mock's client secret and the Graph scope, trusting the mock's CA.
    pub fn oauth(&self) -> OAuthConfig {
        OAuthConfig {
            tenant: TENANT.into(),
            client_id: CLIENT_ID.into(),
            grant: OAuthGrant::ClientSecret(Secret::new(CLIENT_SECRET)),
            token_endpoint: self.token_endpoint(),
            scope: GRAPH_SCOPE.into(),
            ca_file: Some(self.ca_path().to_path_buf()),
        }
    }

    /// A route that sends as [`MAILBOX`] through this mock.
    pub fn route(&self) -> GraphRoute {
        GraphRoute {
            base_url: self.base_url(),
            mailbox: MAILBOX.into(),
            oauth: self.oauth(),
            ca_file: Some(self.ca_path().to_path_buf()),
            timeout: Duration::from_secs(10),
            max_connections: 4,
        }
    }

    /// Lets sendMail accept `token` (tests that hand the transport tokens of their own).
    pub fn accept_token(&self, token: &str) {
        self.state
            .valid_tokens
            .lock()
            .unwrap()
            .insert(token.to_string());
    }

    /// From now on `token` gets `401`, as after a revocation.
    pub fn revoke_token(&self, token: &str) {
        self.state.valid_tokens.lock().unwrap().remove(token);
    }

    pub fn add_mailbox(&self, mailbox: &str) {
        self.state
            .mailboxes
            .lock()
            .unwrap()
            .insert(mailbox.to_lowercase());
    }

    /// Answers for the next authenticated sendMail requests, one each, before the usual checks.
    pub fn script(&self, replies: impl IntoIterator<Item = GraphReply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Every sendMail request waits this long before it is answered.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    pub fn messages(&self) -> Vec<SentMail> {
        self.state.messages.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<SendRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    /// The most sendMail requests that were in progress at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages were accepted; panics after `timeout` with what there is.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<SentMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.received.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} messages within {timeout:?}, got {}; requests: {:#?}",
                    messages.len(),
                    self.requests()
                );
            }
        }
    }
}

/// Counts a request as in flight while it lives.
struct InFlight(Arc<MockState>);

impl InFlight {
    fn new(state: &Arc<MockState>) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn send_mail(
    State(state): State<Arc<MockState>>,
    Path(mailbox): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::new(&state);
    let request_id = format!(
        "mock-request-{}",
        state.next_request.fetch_add(1, Ordering::SeqCst) + 1
    );
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let reply = answer(
        &state,
        &mailbox,
        token.as_deref(),
        &headers,
        &body,
        &request_id,
    );
    state.requests.lock().unwrap().push(SendRequest {
        path: uri.path().to_string(),
        token,
        status: reply.status,
    });
    if reply.status == 202 {
        state.received.notify_waiters();
    }
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        reply.body,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("request-id", HeaderValue::from_str(&request_id).unwrap());
    if let Some(seconds) = reply.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn answer(
    state: &MockState,
    mailbox: &str,
    token: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    request_id: &str,
) -> GraphReply {
    let authorized = token.is_some_and(|t| state.valid_tokens.lock().unwrap().contains(t));
    if !authorized {
        return GraphReply::error(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        );
    }
    if let Some(reply) = state.script.lock().unwrap().pop_front()
        && reply.status != 202
    {
        return reply;
    }
    if !state
        .mailboxes
        .lock()
        .unwrap()
        .contains(&mailbox.to_lowercase())
    {
        return GraphReply::error(
            404,
            "ErrorInvalidUser",
            &format!("The requested user '{mailbox}' is invalid."),
        );
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("text/plain") {
        return GraphReply::error(
            400,
            "RequestBodyRead",
            "Unable to read JSON request payload.",
        );
    }
    let Ok(mime) = BASE64.decode(body) else {
        return GraphReply::error(
            400,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        );
    };
    let mut messages = state.messages.lock().unwrap();
    messages.push(SentMail {
        mailbox: mailbox.to_string(),
        token: token.unwrap_or_default().to_string(),
        mime,
        request_id: request_id.to_string(),
    });
    GraphReply::accepted()
}

async fn token(
    State(state): State<Arc<MockState>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let refuse = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            axum::Json(serde_json::json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if tenant != TENANT {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS90002: Tenant not found.",
        );
    }
    if field("grant_type") != "client_credentials" {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    if field("scope") != GRAPH_SCOPE {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid.",
        );
    }
    let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
    let access_token = format!("mock-graph-token-{n}");
    state
        .valid_tokens
        .lock()
        .unwrap()
        .insert(access_token.clone());
    axum::Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": access_token,
    }))
    .into_response()
}

/// TLS on accepted connections, for `axum::serve`. The handshake happens in `accept`, one at a time:
/// enough for tests.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
