//! The routes of the admin server and their handlers.

use super::{AdminContext, metrics, redact, token_matches};
use crate::control::{Request, Response as Control};
use crate::ingest::{Origin, Submission};
use crate::smtp::command::is_valid_mailbox;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

type Ctx = State<Arc<AdminContext>>;

const PAGE: &str = include_str!("page.html");

pub fn router(context: Arc<AdminContext>) -> Router {
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/queue", get(queue_list))
        .route("/api/v1/queue/retry-all", post(retry_all))
        .route("/api/v1/queue/{id}", get(queue_show).delete(queue_delete))
        .route("/api/v1/queue/{id}/{action}", post(queue_action))
        .route("/api/v1/badmail", get(badmail_list))
        .route("/api/v1/badmail/{name}/resubmit", post(badmail_resubmit))
        .route("/api/v1/routes", get(routes))
        .route("/api/v1/deliveries", get(deliveries))
        .route("/api/v1/upstreams", get(upstreams))
        .route("/api/v1/config", get(config))
        .route("/api/v1/send-test", post(send_test))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(context.clone(), authorize));
    Router::new()
        .route("/", get(page))
        .merge(api)
        .with_state(context)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Every route but the page: `Authorization: Bearer <token>`.
async fn authorize(
    State(ctx): Ctx,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(token) if token_matches(token, &ctx.token) => next.run(request).await,
        _ => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>, see [admin] token_env/token_file)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"smarthost\""),
            );
            response
        }
    }
}

async fn page() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    (headers, Html(PAGE)).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// A control response as HTTP: errors are mapped by what they say (unknown id 404, busy or held 409).
fn reply(response: Control) -> Response {
    match response {
        Control::Ok { message } => Json(json!({ "message": message })).into_response(),
        Control::List(list) => Json(list).into_response(),
        Control::Show(detail) => Json(detail).into_response(),
        Control::BadmailList(list) => Json(list).into_response(),
        Control::BadmailShow {
            record,
            report,
            headers,
        } => {
            Json(json!({ "record": record, "report": report, "headers": headers })).into_response()
        }
        Control::Error { message } => error(status_for(&message), message),
    }
}

pub(super) fn status_for(message: &str) -> StatusCode {
    if message.starts_with("no message with queue id") || message.starts_with("no badmail entry") {
        StatusCode::NOT_FOUND
    } else if message.contains("in a delivery attempt right now") || message.contains("is held;") {
        StatusCode::CONFLICT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// Queue size and the age of its oldest message.
fn queue_gauges(ctx: &AdminContext) -> (u64, u64) {
    let list = ctx.queue.list();
    let now = crate::spool::unix_now();
    let oldest = list
        .iter()
        .map(|m| m.received_at)
        .min()
        .map_or(0, |t| now.saturating_sub(t));
    (list.len() as u64, oldest)
}

async fn status(State(ctx): Ctx) -> Response {
    let (size, oldest) = queue_gauges(&ctx);
    let m = metrics::metrics();
    let cluster = ctx.config.cluster.as_ref().map(|c| {
        let up = m
            .cluster_redis_up
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1;
        json!({
            "redis": c.redis.display(),
            "redis_up": up,
            "limits": if up { "shared" } else { "fallback" },
            "expected_nodes": c.expected_nodes,
            "fallbacks": m.cluster_fallbacks.get(),
        })
    });
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node": ctx.config.node,
        "cluster": cluster,
        "uptime_seconds": ctx.started.elapsed().as_secs(),
        "queue_messages": size,
        "oldest_message_age_seconds": oldest,
        "listeners": ctx.listeners.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "routes": redact::routes(&ctx.config),
    }))
    .into_response()
}

async fn queue_list(State(ctx): Ctx) -> Response {
    reply(ctx.handler.handle(Request::List).await)
}

async fn queue_show(State(ctx): Ctx, Path(id): Path<String>) -> Response {
    reply(ctx.handler.handle(Request::Show { id }).await)
}

async fn queue_delete(State(ctx): Ctx, Path(id): Path<String>) -> Response {
    reply(ctx.handler.handle(Request::Delete { id }).await)
}

async fn queue_action(State(ctx): Ctx, Path((id, action)): Path<(String, String)>) -> Response {
    let request = match action.as_str() {
        "retry" => Request::Retry { id },
        "hold" => Request::Hold { id },
        "release" => Request::Release { id },
        "bounce" => Request::Bounce { id },
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown action {action:?}: retry, hold, release or bounce"),
            );
        }
    };
    reply(ctx.handler.handle(request).await)
}

async fn retry_all(State(ctx): Ctx) -> Response {
    reply(ctx.handler.handle(Request::RetryAll).await)
}

async fn badmail_list(State(ctx): Ctx) -> Response {
    reply(ctx.handler.handle(Request::BadmailList).await)
}

async fn badmail_resubmit(State(ctx): Ctx, Path(name): Path<String>) -> Response {
    reply(ctx.handler.handle(Request::BadmailResubmit { name }).await)
}

async fn routes(State(ctx): Ctx) -> Response {
    Json(redact::routes(&ctx.config)).into_response()
}

/// The latest recipient results (delivered, deferred, failed), newest first.
async fn deliveries() -> Response {
    Json(metrics::metrics().recent_deliveries()).into_response()
}

/// Every route with how its upstream answered lately (`health` is null before the first attempt).
async fn upstreams(State(ctx): Ctx) -> Response {
    let health = metrics::metrics().route_health();
    let list: Vec<serde_json::Value> = ctx
        .config
        .routes
        .iter()
        .map(|route| {
            serde_json::json!({
                "route": route.name,
                "health": health.get(&route.name),
            })
        })
        .collect();
    Json(list).into_response()
}

async fn config(State(ctx): Ctx) -> Response {
    Json(redact::config(&ctx.config)).into_response()
}

async fn metrics_text(State(ctx): Ctx) -> Response {
    let (size, oldest) = queue_gauges(&ctx);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::with_node_label(
            &metrics::metrics().render(size, oldest),
            &ctx.config.node,
            ctx.config.cluster.is_some(),
        ),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendTest {
    from: String,
    to: OneOrMany,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

/// A test message, submitted like any other (origin `admin`).
async fn send_test(State(ctx): Ctx, body: axum::body::Bytes) -> Response {
    let request: SendTest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected JSON {{\"from\", \"to\", \"subject\", \"body\"}}: {e}"),
            );
        }
    };
    let recipients = match request.to {
        OneOrMany::One(to) => vec![to],
        OneOrMany::Many(list) => list,
    };
    let recipients: Vec<String> = recipients.iter().map(|r| r.trim().to_string()).collect();
    let from = request.from.trim().to_string();
    if !is_valid_mailbox(&from) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`from` {from:?} is not a valid address"),
        );
    }
    if recipients.is_empty() {
        return error(StatusCode::BAD_REQUEST, "`to` is empty");
    }
    if let Some(bad) = recipients.iter().find(|r| !is_valid_mailbox(r)) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`to` {bad:?} is not a valid address"),
        );
    }
    let subject = request
        .subject
        .unwrap_or_else(|| "smarthost test message".to_string());
    let text = request
        .body
        .unwrap_or_else(|| "This is a test message sent from the smarthost admin API.".to_string());
    let content = test_message(&ctx.config.hostname, &from, &recipients, &subject, &text);
    let smtputf8 = !from.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
    let submission = Submission {
        sender: from,
        recipients,
        smtputf8,
        origin: Origin {
            source: "admin",
            client_ip: None,
            helo: None,
            protocol: "local",
        },
    };
    match ctx.ingest.submit(submission, content).await {
        Ok(id) => Json(json!({ "id": id, "message": format!("queued as {id}") })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// An RFC 5322 text message: CRLF line endings, header values without line breaks.
fn test_message(hostname: &str, from: &str, to: &[String], subject: &str, body: &str) -> Vec<u8> {
    let one_line = |s: &str| s.replace(['\r', '\n'], " ");
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let unique: u64 = rand::random();
    let mut out = format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMessage-ID: <{unique:016x}.admin@{hostname}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        to.iter()
            .map(|t| format!("<{t}>"))
            .collect::<Vec<_>>()
            .join(", "),
        one_line(subject),
    );
    let normalized = body.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalized.lines() {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_errors_map_to_statuses() {
        assert_eq!(
            status_for("no message with queue id 0611 in the queue"),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_for("no badmail entry named x (see `smarthost badmail list`)"),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_for("message X is in a delivery attempt right now; try again in a moment"),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status_for("message X is held; release it first"),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status_for("spool error: disk"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn test_message_has_crlf_and_one_line_headers() {
        let m = test_message(
            "relay.test",
            "a@b.example",
            &["c@d.example".to_string()],
            "hi\r\nBcc: x@y",
            "line1\nline2",
        );
        let text = String::from_utf8(m).unwrap();
        assert!(text.contains("Subject: hi  Bcc: x@y\r\n"));
        assert!(text.ends_with("\r\n\r\nline1\r\nline2\r\n"));
        assert!(!text.replace("\r\n", "").contains('\n'));
    }
}
