//! The Microsoft Graph transport: `POST {base_url}/users/{mailbox}/sendMail` with the whole MIME message
//! base64-encoded (`Content-Type: text/plain`) and an app-only OAuth 2.0 access token
//! (scope `https://graph.microsoft.com/.default`, application permission `Mail.Send`).
//!
//! # Recipients: Graph has no envelope
//! Graph sends to every address in the To, Cc and Bcc fields of the MIME and to nobody else. The relay
//! promises SMTP semantics: a message goes to its envelope recipients, each once. So before sending,
//! the header section is rewritten ([`recipients::restrict_to_envelope`]) so that To/Cc/Bcc name
//! exactly the envelope recipients of this delivery (those routed here and not yet final):
//! - To and Cc keep, in order and as written, the mailboxes that are envelope recipients of this
//!   delivery; the others are removed, because Graph would send to them: they were routed to another
//!   transport (which delivers them itself), delivered in an earlier attempt, or were never envelope
//!   recipients (a client may name addresses in To that it does not RCPT). A field left empty goes.
//! - Every Bcc (and Resent-Bcc) field is removed, and one Bcc field lists the envelope recipients that
//!   To/Cc do not name: blind copies stay blind (Exchange keeps Bcc out of the delivered copies and in
//!   the Sent Items copy) and are delivered.
//! - Nothing else changes. A message whose To/Cc name exactly its envelope and that has no Bcc field
//!   (the usual case: a device sends to one address, or every recipient is on the Graph route) goes
//!   byte for byte as stored.
//!
//! The price: when one message is split between Graph and another route, Graph's recipients see a
//! To/Cc without the addresses delivered elsewhere. A shorter list is better than sending those people
//! the message twice, or sending it to addresses the client never asked for. Sites that mind route all
//! of a domain's senders' mail through one Graph route.
//!
//! # Outcomes
//! One request per delivery; all its recipients share its result.
//! - `2xx` (Graph answers `202 Accepted`): handed over. Graph accepted it for sending; that is not a
//!   delivery report, and Exchange sends any later non-delivery report to the mailbox, not to the
//!   envelope sender.
//! - `401`: the token is dropped from the cache ([`TokenSource::invalidate`]) and the request is made
//!   once more with a fresh one; a second `401` defers.
//! - `403` and `404` defer. This URL names nothing from the message, only the route's mailbox and the
//!   app's rights, so these answers are about configuration (no `Mail.Send` consent, an application
//!   access policy that excludes the mailbox, a mistyped or unlicensed mailbox, a wrong base URL). As
//!   for SMTP AUTH failures (`classify.rs`), the administrator fixes it and the queue drains; bouncing
//!   every message for a typo is what this rule prevents. Expiry still bounces eventually.
//! - `408`, `409`, `425`, `429`, every `5xx`, other unexpected codes, network errors and timeouts defer.
//!   A `Retry-After` (seconds) is put into the reason as `retry after N s`; [`retry_after`] reads it back.
//! - Other `4xx` (`400 ErrorInvalidRecipients`, `400 ErrorMimeContentInvalidBase64String`, `413`, ...)
//!   are about this message: the recipients fail with `Graph error CODE: message` in the bounce.
//! - A message whose base64 form exceeds [`MAX_REQUEST_BODY`] is not sent: its recipients fail with a
//!   reason that says so. (Graph takes larger messages only as a draft plus upload sessions for each
//!   attachment, which needs the MIME taken apart; not built.)
//!
//! A timeout after the request was sent may hide an accepted message: retrying then can send it twice.
//! That is the usual at-least-once trade; losing mail is worse.
//!
//! # Limits and secrets
//! At most `max_connections` requests are in flight (Graph allows 4 concurrent requests per app and
//! mailbox); each request, token fetch included, is bounded by the route's `timeout`. TLS 1.2+ only,
//! certificates always verified against the system roots plus `ca_file`; only `https` base URLs are
//! accepted, redirects are not followed, and the token never appears in a log line or a reason.
//! `HTTPS_PROXY`/`NO_PROXY` from the environment are honoured.

mod recipients;

pub use recipients::restrict_to_envelope;

use super::oauth::{AccessToken, OAuthError, TokenProvider};
use super::{OutboundMessage, RecipientResult};
use crate::config::GraphRoute;
use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug};

/// The largest request body sent: Graph takes about 4 MB in one request. The base64 form is 4/3 of
/// the message, so messages up to about 3 MB fit.
pub const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;

/// How much of an error answer is read to find Graph's error code.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The text [`retry_after`] looks for in a reason.
const RETRY_AFTER_TEXT: &str = "retry after ";

/// A source of access tokens: the route's [`TokenProvider`] in the relay, a fixed set in tests.
pub trait TokenSource: Send + Sync + fmt::Debug {
    fn access_token(&self) -> TokenFuture<'_>;
    /// The upstream refused `token`: do not hand it out again.
    fn invalidate(&self, token: &AccessToken);
}

pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AccessToken, OAuthError>> + Send + 'a>>;

impl TokenSource for TokenProvider {
    fn access_token(&self) -> TokenFuture<'_> {
        Box::pin(TokenProvider::access_token(self))
    }

    fn invalidate(&self, token: &AccessToken) {
        TokenProvider::invalidate(self, token);
    }
}

/// How long Graph asked us to wait, read back from a reason written by this transport.
pub fn retry_after(reason: &str) -> Option<Duration> {
    let start = reason.find(RETRY_AFTER_TEXT)? + RETRY_AFTER_TEXT.len();
    let rest = &reason[start..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    if !rest[digits..].starts_with(" s") {
        return None;
    }
    rest[..digits].parse().ok().map(Duration::from_secs)
}

pub struct GraphTransport {
    mailbox: String,
    send_url: reqwest::Url,
    timeout: Duration,
    client: reqwest::Client,
    tokens: Arc<dyn TokenSource>,
    /// One permit per request in flight.
    slots: Semaphore,
    /// The mailbox's request slots shared with other nodes (`[cluster]`).
    cluster_slots: std::sync::OnceLock<Arc<crate::cluster::Slots>>,
}

impl fmt::Debug for GraphTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphTransport")
            .field("send_url", &self.send_url.as_str())
            .field("timeout", &self.timeout)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl GraphTransport {
    /// The transport with its own [`TokenProvider`]. The route's `ca_file` also serves the token
    /// endpoint unless `[route.oauth]` names its own.
    pub fn new(route: &GraphRoute) -> anyhow::Result<Self> {
        let mut oauth = route.oauth.clone();
        if oauth.ca_file.is_none() {
            oauth.ca_file = route.ca_file.clone();
        }
        let tokens = TokenProvider::new(&oauth)?;
        Self::with_token_source(route, tokens)
    }

    /// The transport with tokens from `tokens` (tests, or a provider shared between routes).
    pub fn with_token_source(
        route: &GraphRoute,
        tokens: Arc<dyn TokenSource>,
    ) -> anyhow::Result<Self> {
        let send_url = send_url(&route.base_url, &route.mailbox)?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(route.timeout)
            .timeout(route.timeout)
            .user_agent(concat!("smarthost/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &route.ca_file {
            let file = path.display();
            let pem = std::fs::read(path).with_context(|| format!("cannot read ca_file {file}"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("ca_file {file} is not valid PEM"))?;
            if certs.is_empty() {
                bail!(
                    "ca_file {file} contains no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)"
                );
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().context("HTTP client for Microsoft Graph")?;
        if !route.oauth.scope.contains("graph") {
            tracing::warn!(
                scope = %route.oauth.scope,
                "the OAuth scope of a Graph route should be https://graph.microsoft.com/.default: Graph refuses tokens for other audiences"
            );
        }
        Ok(GraphTransport {
            mailbox: route.mailbox.clone(),
            send_url,
            timeout: route.timeout,
            client,
            tokens,
            slots: Semaphore::new(route.max_connections.max(1)),
            cluster_slots: std::sync::OnceLock::new(),
        })
    }

    /// From now on every request also holds one of `slots` (shared with the other nodes).
    pub fn join_cluster(&self, slots: Arc<crate::cluster::Slots>) {
        let _ = self.cluster_slots.set(slots);
    }

    pub async fn deliver(&self, msg: &OutboundMessage<'_>) -> Vec<RecipientResult> {
        if msg.recipients.is_empty() {
            return Vec::new();
        }
        let span = tracing::info_span!("graph", queue_id = msg.queue_id, mailbox = %self.mailbox);
        let result = self.send(msg).instrument(span).await;
        vec![result; msg.recipients.len()]
    }

    async fn send(&self, msg: &OutboundMessage<'_>) -> RecipientResult {
        let mime = restrict_to_envelope(msg.content, msg.recipients);
        let body = BASE64.encode(&mime);
        if body.len() > MAX_REQUEST_BODY {
            return RecipientResult::Failed {
                reason: too_large(mime.len(), body.len()),
            };
        }
        drop(mime);
        let body = Bytes::from(body);

        let mut refused_once = false;
        loop {
            let token = match self.token().await {
                Ok(token) => token,
                Err(reason) => return RecipientResult::Deferred { reason },
            };
            let answer = match self.post(&token, body.clone()).await {
                Ok(answer) => answer,
                Err(err) => {
                    return RecipientResult::Deferred {
                        reason: self.network_failure(&err),
                    };
                }
            };
            debug!(status = answer.status.as_u16(), request_id = ?answer.request_id(), "sendMail answered");
            if answer.status == StatusCode::UNAUTHORIZED {
                self.tokens.invalidate(&token);
                if !refused_once {
                    refused_once = true;
                    debug!("Graph refused the access token; trying once more with a fresh one");
                    continue;
                }
            }
            return self.outcome(&answer);
        }
    }

    async fn token(&self) -> Result<AccessToken, String> {
        match tokio::time::timeout(self.timeout, self.tokens.access_token()).await {
            Ok(Ok(token)) => Ok(token),
            Ok(Err(err)) => Err(format!("cannot get an access token for Graph: {err}")),
            Err(_) => Err(format!(
                "no access token for Graph within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }

    async fn post(&self, token: &AccessToken, body: Bytes) -> Result<Answer, reqwest::Error> {
        let _permit = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let _lease = match self.cluster_slots.get() {
            Some(slots) => Some(slots.acquire().await),
            None => None,
        };
        let mut response = self
            .client
            .post(self.send_url.clone())
            .header(AUTHORIZATION, format!("Bearer {}", token.value.expose()))
            .header(CONTENT_TYPE, "text/plain")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut text = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if text.len() < MAX_ERROR_BODY {
                text.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BODY - text.len())]);
            }
        }
        Ok(Answer::new(status, &headers, &text))
    }

    fn outcome(&self, answer: &Answer) -> RecipientResult {
        let status = answer.status.as_u16();
        match classify_status(status) {
            Verdict::Accepted => RecipientResult::Delivered {
                reply: format!(
                    "Graph sendMail accepted ({status}) for mailbox {}{}",
                    self.mailbox,
                    answer
                        .request_id()
                        .map(|id| format!(", request-id {id}"))
                        .unwrap_or_default()
                ),
            },
            Verdict::Temporary => {
                let mut reason = self.describe(answer);
                if let Some(hint) = hint(status) {
                    reason.push_str("; ");
                    reason.push_str(hint);
                }
                if let Some(seconds) = answer.retry_after {
                    reason.push_str(&format!("; {RETRY_AFTER_TEXT}{seconds} s"));
                }
                RecipientResult::Deferred { reason }
            }
            Verdict::Permanent => {
                let mut reason = self.describe(answer);
                if status == 413 {
                    reason.push_str("; the message is too large for Graph sendMail (about 4 MB per request): use an SMTP route for large messages");
                }
                RecipientResult::Failed { reason }
            }
        }
    }

    /// `Graph error CODE: message (HTTP 400 from sendMail for mailbox M, request-id R)`, or the status
    /// and the start of the body when the answer is not Graph's error JSON.
    fn describe(&self, answer: &Answer) -> String {
        let status = answer.status;
        let context = format!(
            "HTTP {} from sendMail for mailbox {}{}",
            status.as_u16(),
            self.mailbox,
            answer
                .request_id()
                .map(|id| format!(", request-id {id}"))
                .unwrap_or_default()
        );
        match &answer.error {
            Some(error) => format!("Graph error {}: {} ({context})", error.code, error.message),
            None => {
                let mut text = format!(
                    "Graph answered {} {} ({context})",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                );
                if !answer.excerpt.is_empty() {
                    text.push_str(": ");
                    text.push_str(&answer.excerpt);
                }
                text
            }
        }
    }

    fn network_failure(&self, err: &reqwest::Error) -> String {
        let host = self.send_url.host_str().unwrap_or("?");
        let causes = causes(err);
        if err.is_timeout() {
            format!(
                "no answer from Graph ({host}) within {}",
                humantime::format_duration(self.timeout)
            )
        } else if err.is_connect() {
            let hint = if causes.contains("UnknownIssuer") {
                "; the server's certificate does not chain to a trusted CA: add that CA with ca_file"
            } else {
                ""
            };
            format!("cannot connect to Graph ({host}): {causes}{hint}")
        } else {
            format!("request to Graph ({host}) failed: {causes}")
        }
    }
}

/// `{base_url}/users/{mailbox}/sendMail`, the mailbox percent-encoded as one path segment.
fn send_url(base_url: &str, mailbox: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base_url)
        .with_context(|| format!("graph_base_url {base_url:?} is not a URL"))?;
    if url.scheme() != "https" {
        bail!(
            "graph_base_url {base_url} must use https: the access token must not travel in clear text"
        );
    }
    if mailbox.trim().is_empty() {
        bail!("a Graph route needs a mailbox (a user id or user principal name)");
    }
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("graph_base_url {base_url} cannot have a path"))?
        .pop_if_empty()
        .extend(["users", mailbox, "sendMail"]);
    Ok(url)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Temporary,
    Permanent,
}

/// The module docs give the reasons.
fn classify_status(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Accepted,
        401 | 403 | 404 | 408 | 409 | 425 | 429 => Verdict::Temporary,
        400..=499 => Verdict::Permanent,
        _ => Verdict::Temporary,
    }
}

/// What the operator should do about a deferring status.
fn hint(status: u16) -> Option<&'static str> {
    Some(match status {
        401 => {
            "Graph refused the access token twice: check the app registration's tenant and that the token's scope is https://graph.microsoft.com/.default"
        }
        403 => {
            "the app may not send as this mailbox: grant the application permission Mail.Send with admin consent, and check any application access policy or RBAC scope that limits the app to certain mailboxes"
        }
        404 => {
            "the mailbox was not found: check the route's mailbox (a user id or user principal name with an Exchange Online licence) and graph_base_url"
        }
        429 => {
            "Graph is throttling this app and mailbox (4 concurrent requests, 10,000 requests per 10 minutes)"
        }
        _ => return None,
    })
}

/// What the relay keeps of an HTTP answer.
struct Answer {
    status: StatusCode,
    header_request_id: Option<String>,
    retry_after: Option<u64>,
    error: Option<GraphError>,
    /// The start of a non-JSON body, on one line.
    excerpt: String,
}

impl Answer {
    fn new(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Answer {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let error = serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|body| body.error);
        let excerpt = if error.is_none() {
            one_line(&String::from_utf8_lossy(body), 200)
        } else {
            String::new()
        };
        Answer {
            status,
            header_request_id: header("request-id"),
            retry_after: header(RETRY_AFTER.as_str()).and_then(|v| v.parse().ok()),
            error,
            excerpt,
        }
    }

    fn request_id(&self) -> Option<&str> {
        self.error
            .as_ref()
            .and_then(|e| e.inner.as_ref())
            .and_then(|inner| inner.request_id.as_deref())
            .or(self.header_request_id.as_deref())
    }
}

/// `{"error":{"code":"...","message":"...","innerError":{"request-id":"...","date":"..."}}}`
#[derive(Debug, serde::Deserialize)]
struct ErrorBody {
    error: GraphError,
}

#[derive(Debug, serde::Deserialize)]
struct GraphError {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "innerError", alias = "innererror")]
    inner: Option<InnerError>,
}

#[derive(Debug, serde::Deserialize)]
struct InnerError {
    #[serde(default, rename = "request-id")]
    request_id: Option<String>,
}

fn too_large(mime: usize, encoded: usize) -> String {
    format!(
        "message of {mime} bytes exceeds what Graph sendMail takes in one request (about 4 MB; \
         {encoded} bytes in base64); sending larger messages through Graph is not supported yet: \
         use an SMTP route for large messages"
    )
}

/// The causes under a reqwest error (its own text names the URL, which the reason already says).
fn causes(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper's "client error (Connect)" says nothing the next cause does not.
        if !text.starts_with("client error (") && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        parts.push(err.to_string());
    }
    parts.join(": ")
}

/// `text` on one line, control characters dropped, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().filter(|c| !c.is_control()));
        if out.chars().count() > max {
            out = out.chars().take(max).collect();
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_by_who_can_fix_them() {
        use Verdict::*;
        let cases = [
            (202, Accepted),
            (200, Accepted),
            (400, Permanent),
            (413, Permanent),
            (415, Permanent),
            (422, Permanent),
            (401, Temporary),
            (403, Temporary),
            (404, Temporary),
            (408, Temporary),
            (409, Temporary),
            (429, Temporary),
            (500, Temporary),
            (502, Temporary),
            (503, Temporary),
            (504, Temporary),
            (301, Temporary),
            (100, Temporary),
        ];
        for (status, verdict) in cases {
            assert_eq!(classify_status(status), verdict, "{status}");
        }
    }

    #[test]
    fn retry_after_is_read_back_from_a_reason() {
        assert_eq!(
            retry_after("Graph answered 429 (...); retry after 30 s"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("x; retry after 7 s; more"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after("Graph answered 503"), None);
        assert_eq!(retry_after("retry after soon"), None);
        assert_eq!(retry_after("retry after 5 minutes"), None);
    }

    #[test]
    fn the_send_url_encodes_the_mailbox_as_one_segment() {
        let cases = [
            (
                "https://graph.microsoft.com/v1.0",
                "scanner@contoso.com",
                "https://graph.microsoft.com/v1.0/users/scanner@contoso.com/sendMail",
            ),
            (
                "https://graph.microsoft.com/v1.0/",
                "scanner@contoso.com",
                "https://graph.microsoft.com/v1.0/users/scanner@contoso.com/sendMail",
            ),
            (
                "https://graph.microsoft.us/v1.0",
                "guest_x.example#EXT#@contoso.onmicrosoft.com",
                "https://graph.microsoft.us/v1.0/users/guest_x.example%23EXT%23@contoso.onmicrosoft.com/sendMail",
            ),
            (
                "https://127.0.0.1:8443/v1.0",
                "a/b?c d",
                "https://127.0.0.1:8443/v1.0/users/a%2Fb%3Fc%20d/sendMail",
            ),
        ];
        for (base, mailbox, expected) in cases {
            assert_eq!(send_url(base, mailbox).unwrap().as_str(), expected);
        }
        let err = send_url("http://graph.microsoft.com/v1.0", "a@b").unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        assert!(send_url("https://graph.microsoft.com/v1.0", " ").is_err());
        assert!(send_url("not a url", "a@b").is_err());
    }

    #[test]
    fn graph_error_json_is_read() {
        let body = br#"{"error":{"code":"ErrorInvalidRecipients","message":"At least one recipient is not valid.","innerError":{"request-id":"1f2e","date":"2026-01-01T00:00:00"}}}"#;
        let answer = Answer::new(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
        let error = answer.error.as_ref().unwrap();
        assert_eq!(error.code, "ErrorInvalidRecipients");
        assert_eq!(error.message, "At least one recipient is not valid.");
        assert_eq!(answer.request_id(), Some("1f2e"));

        let mut headers = HeaderMap::new();
        headers.insert("request-id", "from-header".parse().unwrap());
        headers.insert("retry-after", "12".parse().unwrap());
        let answer = Answer::new(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers,
            b"<html>\r\n<body>Service\tUnavailable</body></html>",
        );
        assert!(answer.error.is_none());
        assert_eq!(answer.request_id(), Some("from-header"));
        assert_eq!(answer.retry_after, Some(12));
        assert_eq!(
            answer.excerpt,
            "<html> <body>Service Unavailable</body></html>"
        );
    }
}
