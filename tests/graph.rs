//! The Microsoft Graph transport against a Graph stand-in over HTTPS (`common::graph_mock`): first the
//! transport on its own with tokens the test hands it, then the whole relay (SMTP in, Graph out) with
//! tokens from the mock's token endpoint.

mod common;

use common::client::Client;
use common::graph_mock::{GraphMock, GraphReply, MAILBOX};
use smarthost::cli::serve::{Running, start};
use smarthost::config::{
    Config, DomainPattern, GraphRoute, ListenerConfig, M365Mode, MailboxLimits, RouteConfig,
    Transport, default_config,
};
use smarthost::deliver::graph::{self, GraphTransport, TokenFuture, TokenSource};
use smarthost::deliver::oauth::{AccessToken, OAuthError};
use smarthost::deliver::{OutboundMessage, RecipientResult};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const RECEIVED: &str = "Received: from scanner1 ([127.0.0.1])\r\n\tby relay.test (smarthost) with ESMTP id 0123ABCD; Thu, 1 Jan 2026 00:00:00 +0000\r\n";

/// Tokens `test-token-1`, `test-token-2`, ...: the current one until it is invalidated.
#[derive(Debug, Default)]
struct TestTokens {
    state: Mutex<TokenState>,
    fail: bool,
}

#[derive(Debug, Default)]
struct TokenState {
    current: usize,
    handed_out: usize,
    invalidated: Vec<String>,
}

impl TestTokens {
    fn new() -> Arc<Self> {
        Arc::new(TestTokens::default())
    }

    fn failing() -> Arc<Self> {
        Arc::new(TestTokens {
            fail: true,
            ..TestTokens::default()
        })
    }

    fn invalidated(&self) -> Vec<String> {
        self.state.lock().unwrap().invalidated.clone()
    }

    fn handed_out(&self) -> usize {
        self.state.lock().unwrap().handed_out
    }
}

impl TokenSource for TestTokens {
    fn access_token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            if self.fail {
                return Err(OAuthError::Failed(
                    "AADSTS7000215: Invalid client secret provided".into(),
                ));
            }
            let mut state = self.state.lock().unwrap();
            state.current = state.current.max(1);
            state.handed_out += 1;
            Ok(AccessToken {
                value: smarthost::config::Secret::new(format!("test-token-{}", state.current)),
                expires_at: u64::MAX,
            })
        })
    }

    fn invalidate(&self, token: &AccessToken) {
        let mut state = self.state.lock().unwrap();
        state.invalidated.push(token.value.expose().to_string());
        if token.value.expose() == format!("test-token-{}", state.current) {
            state.current += 1;
        }
    }
}

fn transport(route: &GraphRoute, tokens: &Arc<TestTokens>) -> GraphTransport {
    GraphTransport::with_token_source(route, tokens.clone()).expect("transport")
}

/// Delivers `content` to `recipients`; checks there is one result per recipient, all equal, and that
/// no reason or reply carries a token.
async fn deliver(t: &GraphTransport, recipients: &[&str], content: &[u8]) -> RecipientResult {
    let recipients: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    let msg = OutboundMessage {
        queue_id: "0123ABCD",
        sender: "scanner@contoso.example",
        recipients: &recipients,
        content,
        smtputf8: false,
        eight_bit: false,
    };
    let results = t.deliver(&msg).await;
    assert_eq!(results.len(), recipients.len());
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    let text = format!("{:?}", results[0]);
    assert!(!text.contains("token-"), "a token in a result: {text}");
    results.into_iter().next().unwrap()
}

fn reason(result: &RecipientResult) -> &str {
    match result {
        RecipientResult::Deferred { reason } | RecipientResult::Failed { reason } => reason,
        RecipientResult::Delivered { reply } => panic!("delivered: {reply}"),
    }
}

fn message(headers: &str, body: &str) -> String {
    format!("{RECEIVED}{headers}\r\n{body}")
}

#[tokio::test]
async fn accepted_message_is_delivered_byte_exact() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    let tokens = TestTokens::new();
    let t = transport(&graph.route(), &tokens);
    let content = message(
        "From: Scanner <scanner@contoso.example>\r\nTo: Boss <boss@contoso.example>\r\nSubject: Scan 0042\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
        ".hidden dot\r\nnon-ASCII: Grüße\r\n\r\nlast line\r\n",
    );
    let result = deliver(&t, &["boss@contoso.example"], content.as_bytes()).await;
    let RecipientResult::Delivered { reply } = &result else {
        panic!("{result:?}");
    };
    let sent = graph.messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        reply,
        &format!(
            "Graph sendMail accepted (202) for mailbox {MAILBOX}, request-id {}",
            sent[0].request_id
        )
    );
    assert_eq!(
        sent[0].mime,
        content.as_bytes(),
        "the MIME must arrive unchanged"
    );
    assert_eq!(sent[0].mailbox, MAILBOX);
    assert_eq!(sent[0].token, "test-token-1");
    assert_eq!(
        graph.requests()[0].path,
        "/v1.0/users/scanner@contoso.example/sendMail"
    );
}

#[tokio::test]
async fn bcc_recipients_are_delivered_and_stay_blind() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    let t = transport(&graph.route(), &TestTokens::new());
    let content = message(
        "From: scanner@contoso.example\r\nTo: boss@contoso.example\r\nBcc: archive@contoso.example\r\nSubject: s\r\n",
        "body\r\n",
    );
    let result = deliver(
        &t,
        &[
            "boss@contoso.example",
            "archive@contoso.example",
            "audit@contoso.example",
        ],
        content.as_bytes(),
    )
    .await;
    assert!(
        matches!(result, RecipientResult::Delivered { .. }),
        "{result:?}"
    );
    let sent = graph.messages();
    let expected = message(
        "From: scanner@contoso.example\r\nTo: boss@contoso.example\r\nSubject: s\r\nBcc: archive@contoso.example,\r\n audit@contoso.example\r\n",
        "body\r\n",
    );
    assert_eq!(String::from_utf8_lossy(&sent[0].mime), expected);
    let parsed = mail_parser::MessageParser::default()
        .parse(&sent[0].mime)
        .unwrap();
    let bcc: Vec<&str> = parsed
        .bcc()
        .unwrap()
        .iter()
        .filter_map(|a| a.address())
        .collect();
    assert_eq!(bcc, ["archive@contoso.example", "audit@contoso.example"]);
}

#[tokio::test]
async fn header_recipients_that_are_not_envelope_recipients_are_not_sent_by_graph() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    let t = transport(&graph.route(), &TestTokens::new());
    // b@fabrikam.example goes through another route; c@contoso.example was never an envelope recipient.
    let content = message(
        "To: A <a@contoso.example>, B <b@fabrikam.example>\r\nCc: c@contoso.example\r\nSubject: s\r\n",
        "body\r\n",
    );
    let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    assert!(
        matches!(result, RecipientResult::Delivered { .. }),
        "{result:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&graph.messages()[0].mime),
        message("To: A <a@contoso.example>\r\nSubject: s\r\n", "body\r\n")
    );
}

#[tokio::test]
async fn throttled_429_defers_with_retry_after_then_delivers() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    graph.script([GraphReply::throttled(Some(7))]);
    let t = transport(&graph.route(), &TestTokens::new());
    let content = message("To: a@contoso.example\r\n", "x\r\n");

    let first = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    let RecipientResult::Deferred { reason } = &first else {
        panic!("{first:?}");
    };
    assert!(
        reason.contains("Graph error ApplicationThrottled") && reason.contains("HTTP 429"),
        "{reason}"
    );
    assert_eq!(graph::retry_after(reason), Some(Duration::from_secs(7)));
    assert!(graph.messages().is_empty());

    let second = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    assert!(
        matches!(second, RecipientResult::Delivered { .. }),
        "{second:?}"
    );
    assert_eq!(graph.messages()[0].mime, content.as_bytes());
}

#[tokio::test]
async fn server_errors_defer() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    let t = transport(&graph.route(), &TestTokens::new());
    let content = message("To: a@contoso.example\r\n", "x\r\n");
    let cases = [
        (GraphReply::unavailable(503, Some(30)), "HTTP 503", Some(30)),
        (GraphReply::unavailable(504, None), "HTTP 504", None),
        (
            GraphReply::raw(502, "<html><body>Bad Gateway</body></html>"),
            "Graph answered 502 Bad Gateway",
            None,
        ),
        (GraphReply::raw(500, ""), "Graph answered 500", None),
    ];
    for (reply, fragment, retry) in cases {
        graph.script([reply]);
        let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
        let RecipientResult::Deferred { reason } = &result else {
            panic!("{fragment}: {result:?}");
        };
        assert!(reason.contains(fragment), "{reason}");
        assert_eq!(
            graph::retry_after(reason),
            retry.map(Duration::from_secs),
            "{reason}"
        );
    }
    assert!(graph.messages().is_empty());
}

#[tokio::test]
async fn bad_request_fails_with_graph_code_and_message() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    graph.script([GraphReply::error(
        400,
        "ErrorInvalidRecipients",
        "At least one recipient is not valid.",
    )]);
    let t = transport(&graph.route(), &TestTokens::new());
    let content = message("To: a@contoso.example\r\n", "x\r\n");
    let result = deliver(
        &t,
        &["a@contoso.example", "b@contoso.example"],
        content.as_bytes(),
    )
    .await;
    let RecipientResult::Failed { reason } = &result else {
        panic!("{result:?}");
    };
    assert_eq!(
        reason,
        "Graph error ErrorInvalidRecipients: At least one recipient is not valid. \
         (HTTP 400 from sendMail for mailbox scanner@contoso.example, request-id mock-error-request)"
    );
}

#[tokio::test]
async fn unauthorized_once_gets_a_fresh_token_and_delivers() {
    let graph = GraphMock::start().await;
    // test-token-1 was revoked: Graph refuses it, test-token-2 works.
    graph.accept_token("test-token-2");
    let tokens = TestTokens::new();
    let t = transport(&graph.route(), &tokens);
    let content = message("To: a@contoso.example\r\n", "x\r\n");
    let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    assert!(
        matches!(result, RecipientResult::Delivered { .. }),
        "{result:?}"
    );
    assert_eq!(tokens.invalidated(), ["test-token-1"]);
    let requests = graph.requests();
    assert_eq!(
        requests
            .iter()
            .map(|r| (r.token.as_deref().unwrap(), r.status))
            .collect::<Vec<_>>(),
        [("test-token-1", 401), ("test-token-2", 202)]
    );
    assert_eq!(graph.messages()[0].token, "test-token-2");
}

#[tokio::test]
async fn unauthorized_twice_defers_as_a_configuration_problem() {
    let graph = GraphMock::start().await;
    let tokens = TestTokens::new();
    let t = transport(&graph.route(), &tokens);
    let content = message("To: a@contoso.example\r\n", "x\r\n");
    let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    let reason = reason(&result);
    assert!(
        matches!(result, RecipientResult::Deferred { .. }),
        "{result:?}"
    );
    assert!(
        reason.contains("InvalidAuthenticationToken")
            && reason.contains("https://graph.microsoft.com/.default"),
        "{reason}"
    );
    assert_eq!(graph.requests().len(), 2, "one retry, no more");
    assert_eq!(tokens.invalidated(), ["test-token-1", "test-token-2"]);
}

#[tokio::test]
async fn forbidden_and_unknown_mailbox_defer_with_what_to_fix() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    let content = message("To: a@contoso.example\r\n", "x\r\n");

    let t = transport(&graph.route(), &TestTokens::new());
    graph.script([GraphReply::error(
        403,
        "ErrorAccessDenied",
        "Access is denied. Check credentials and try again.",
    )]);
    let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    assert!(
        matches!(result, RecipientResult::Deferred { .. }),
        "{result:?}"
    );
    assert!(
        reason(&result).contains("ErrorAccessDenied") && reason(&result).contains("Mail.Send"),
        "{result:?}"
    );

    let route = GraphRoute {
        mailbox: "typo@contoso.example".into(),
        ..graph.route()
    };
    let t = transport(&route, &TestTokens::new());
    let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    assert!(
        matches!(result, RecipientResult::Deferred { .. }),
        "{result:?}"
    );
    assert!(
        reason(&result).contains("Graph error ErrorInvalidUser")
            && reason(&result).contains("mailbox was not found"),
        "{result:?}"
    );
    assert!(graph.messages().is_empty());
}

#[tokio::test]
async fn oversize_message_fails_without_a_request() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    let t = transport(&graph.route(), &TestTokens::new());
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";

    // About 3 MB: 4 MB of base64, just under the limit.
    let fits = message(
        "To: a@contoso.example\r\n",
        &line.repeat(3_000_000 / line.len()),
    );
    let result = deliver(&t, &["a@contoso.example"], fits.as_bytes()).await;
    assert!(
        matches!(result, RecipientResult::Delivered { .. }),
        "{result:?}"
    );
    assert_eq!(graph.messages()[0].mime.len(), fits.len());

    let big = message(
        "To: a@contoso.example\r\n",
        &line.repeat(3_300_000 / line.len()),
    );
    let result = deliver(&t, &["a@contoso.example"], big.as_bytes()).await;
    let RecipientResult::Failed { reason } = &result else {
        panic!("{result:?}");
    };
    assert!(
        reason.starts_with(&format!(
            "message of {} bytes exceeds what Graph sendMail takes in one request",
            big.len()
        )) && reason.contains("use an SMTP route for large messages"),
        "{reason}"
    );
    assert_eq!(graph.requests().len(), 1, "the large message was not sent");
}

#[tokio::test]
async fn requests_in_flight_are_capped_by_max_connections() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    graph.set_delay(Duration::from_millis(300));
    let route = GraphRoute {
        max_connections: 2,
        ..graph.route()
    };
    let t = Arc::new(transport(&route, &TestTokens::new()));
    let content = Arc::new(message("To: a@contoso.example\r\n", "x\r\n"));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (t, content) = (t.clone(), content.clone());
        tasks.push(tokio::spawn(async move {
            deliver(&t, &["a@contoso.example"], content.as_bytes()).await
        }));
    }
    for task in tasks {
        let result = task.await.unwrap();
        assert!(
            matches!(result, RecipientResult::Delivered { .. }),
            "{result:?}"
        );
    }
    assert_eq!(graph.messages().len(), 6);
    assert_eq!(graph.max_in_flight(), 2);
}

#[tokio::test]
async fn no_answer_within_the_timeout_defers() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    graph.set_delay(Duration::from_secs(3));
    let route = GraphRoute {
        timeout: Duration::from_millis(500),
        ..graph.route()
    };
    let t = transport(&route, &TestTokens::new());
    let content = message("To: a@contoso.example\r\n", "x\r\n");
    let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    assert!(
        matches!(result, RecipientResult::Deferred { .. }),
        "{result:?}"
    );
    assert_eq!(
        reason(&result),
        "no answer from Graph (127.0.0.1) within 500ms"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_defers_and_sends_nothing() {
    let graph = GraphMock::start().await;
    graph.accept_token("test-token-1");
    let route = GraphRoute {
        ca_file: None,
        ..graph.route()
    };
    let t = transport(&route, &TestTokens::new());
    let content = message("To: a@contoso.example\r\n", "x\r\n");
    let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    assert!(
        matches!(result, RecipientResult::Deferred { .. }),
        "{result:?}"
    );
    assert!(
        reason(&result).contains("UnknownIssuer") && reason(&result).contains("ca_file"),
        "{}",
        reason(&result)
    );
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn unreachable_graph_and_token_failures_defer() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let graph = GraphMock::start().await;
    let route = GraphRoute {
        base_url: format!("https://127.0.0.1:{port}/v1.0"),
        ..graph.route()
    };
    let content = message("To: a@contoso.example\r\n", "x\r\n");
    let t = transport(&route, &TestTokens::new());
    let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    assert!(
        matches!(result, RecipientResult::Deferred { .. }),
        "{result:?}"
    );
    assert!(
        reason(&result).starts_with("cannot connect to Graph (127.0.0.1)"),
        "{}",
        reason(&result)
    );

    let tokens = TestTokens::failing();
    let t = transport(&graph.route(), &tokens);
    let result = deliver(&t, &["a@contoso.example"], content.as_bytes()).await;
    assert_eq!(
        result,
        RecipientResult::Deferred {
            reason: "cannot get an access token for Graph: AADSTS7000215: Invalid client secret provided"
                .into()
        }
    );
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn configuration_errors_are_reported_when_the_transport_is_built() {
    let graph = GraphMock::start().await;
    let tokens = TestTokens::new();
    let plain = GraphRoute {
        base_url: "http://graph.example/v1.0".into(),
        ..graph.route()
    };
    let err = GraphTransport::with_token_source(&plain, tokens.clone()).unwrap_err();
    assert!(format!("{err:#}").contains("must use https"), "{err:#}");

    let missing = GraphRoute {
        ca_file: Some("/nonexistent/graph-ca.pem".into()),
        ..graph.route()
    };
    let err = GraphTransport::with_token_source(&missing, tokens.clone()).unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/graph-ca.pem"),
        "{err:#}"
    );
    assert_eq!(tokens.handed_out(), 0);
}

// ---- The whole relay: SMTP in, Graph out, tokens from the mock's token endpoint. ----

const GRAPH_DOMAIN: &str = "contoso.example";

/// A relay whose `contoso.example` (and, unless `other_route`, every) recipient goes to `graph`;
/// with `other_route`, other domains are written to `data_dir/other`.
fn relay_config(data_dir: &Path, graph: &GraphMock, other_route: bool) -> Config {
    let mut config = default_config();
    config.data_dir = data_dir.to_path_buf();
    config.hostname = "relay.test".into();
    config.listeners = vec![ListenerConfig::plain(
        "127.0.0.1:0".parse().unwrap(),
        vec!["127.0.0.1/32".parse().unwrap()],
    )];
    config.queue.schedule.retry = vec![Duration::from_secs(1)];
    let graph_route = RouteConfig {
        name: "graph".into(),
        domains: vec![if other_route {
            DomainPattern::Exact(GRAPH_DOMAIN.into())
        } else {
            DomainPattern::Any
        }],
        transport: Transport::Graph(graph.route()),
        schedule: config.queue.schedule.clone(),
        mode: Some(M365Mode::Graph),
        limits: MailboxLimits {
            throttle_backoff: Duration::from_secs(1),
            ..MailboxLimits::default()
        },
        rewrite_sender: None,
        accepted_domains: Vec::new(),
    };
    let mut routes = vec![graph_route];
    if other_route {
        routes.push(RouteConfig {
            name: "other".into(),
            domains: vec![DomainPattern::Any],
            transport: Transport::Drop {
                path: data_dir.join("other"),
            },
            mode: None,
            ..routes[0].clone()
        });
    }
    config.routes = routes;
    config
}

async fn start_relay(data_dir: &Path, graph: &GraphMock, other_route: bool) -> Running {
    start(relay_config(data_dir, graph, other_route))
        .await
        .expect("relay starts")
}

/// Sends one message; returns the relay's reply to the end of data.
async fn send(addr: std::net::SocketAddr, recipients: &[&str], body: &str) -> String {
    let (mut c, _) = Client::connect(addr).await;
    assert!(c.cmd("EHLO scanner1").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<scanner@contoso.example>")
            .await
            .starts_with("250")
    );
    for rcpt in recipients {
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(reply.starts_with("250"), "{rcpt}: {reply}");
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut wire = Vec::new();
    smarthost::smtp::data::dot_stuff(body.as_bytes(), &mut wire);
    c.send(&wire).await;
    let reply = c.reply().await;
    c.cmd("QUIT").await;
    reply
}

/// The MIME as Graph got it, without the relay's `Received:` header (checked to be the first field).
fn without_received(mime: &[u8]) -> String {
    let text = String::from_utf8(mime.to_vec()).unwrap();
    assert!(
        text.starts_with("Received: from scanner1 ([127.0.0.1])\r\n\tby relay.test (smarthost)"),
        "{text}"
    );
    let end = text.find(';').unwrap();
    let header_end = text[end..].find("\r\n").unwrap() + end + 2;
    text[header_end..].to_string()
}

async fn wait_spool_empty(data_dir: &Path) -> bool {
    for _ in 0..200 {
        let empty = std::fs::read_dir(data_dir.join("spool/queue"))
            .map(|d| d.count() == 0)
            .unwrap_or(true);
        if empty {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn relay_delivers_through_graph_with_bcc_preserved() {
    let graph = GraphMock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), &graph, false).await;
    let body = "From: scanner@contoso.example\r\nTo: boss@contoso.example\r\nSubject: Scan 0042\r\n\r\n.hidden dot\r\nscan attached\r\n";
    let reply = send(
        relay.local_addrs[0],
        &["boss@contoso.example", "archive@contoso.example"],
        body,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let sent = graph.wait_for_messages(1, WAIT).await;
    assert_eq!(
        without_received(&sent[0].mime),
        "From: scanner@contoso.example\r\nTo: boss@contoso.example\r\nSubject: Scan 0042\r\nBcc: archive@contoso.example\r\n\r\n.hidden dot\r\nscan attached\r\n"
    );
    assert!(sent[0].token.starts_with("mock-graph-token-"));
    assert_eq!(graph.tokens_issued(), 1);
    assert!(
        wait_spool_empty(dir.path()).await,
        "delivered message left in the spool"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn relay_retries_after_429_and_delivers_once() {
    let graph = GraphMock::start().await;
    graph.script([GraphReply::throttled(Some(1))]);
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), &graph, false).await;
    let reply = send(
        relay.local_addrs[0],
        &["boss@contoso.example"],
        "To: boss@contoso.example\r\nSubject: later\r\n\r\nhi\r\n",
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let sent = graph.wait_for_messages(1, WAIT).await;
    assert_eq!(sent.len(), 1);
    assert!(wait_spool_empty(dir.path()).await);
    let statuses: Vec<u16> = graph.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 202]);
    relay.shutdown().await;
}

#[tokio::test]
async fn relay_splits_a_message_between_graph_and_another_route_without_duplicates() {
    let graph = GraphMock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), &graph, true).await;
    let body = "To: Boss <boss@contoso.example>, Partner <partner@fabrikam.example>\r\nSubject: both\r\n\r\nhi\r\n";
    let reply = send(
        relay.local_addrs[0],
        &["boss@contoso.example", "partner@fabrikam.example"],
        body,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let sent = graph.wait_for_messages(1, WAIT).await;
    assert_eq!(
        without_received(&sent[0].mime),
        "To: Boss <boss@contoso.example>\r\nSubject: both\r\n\r\nhi\r\n"
    );
    assert!(wait_spool_empty(dir.path()).await);
    let dropped = std::fs::read_dir(dir.path().join("other")).unwrap().count();
    assert!(dropped >= 1, "the other route got nothing");
    assert_eq!(graph.messages().len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn relay_bounces_a_message_graph_refuses_with_its_error_code() {
    let graph = GraphMock::start().await;
    graph.script([GraphReply::error(
        400,
        "ErrorInvalidRecipients",
        "At least one recipient is not valid.",
    )]);
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), &graph, false).await;
    let reply = send(
        relay.local_addrs[0],
        &["nobody@contoso.example"],
        "To: nobody@contoso.example\r\nSubject: x\r\n\r\nhi\r\n",
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    // The bounce goes to the sender, through the same Graph route.
    let sent = graph.wait_for_messages(1, WAIT).await;
    let dsn = common::dsn::parse(&sent[0].mime);
    assert_eq!(
        dsn.recipient_field(0, "final-recipient"),
        Some("rfc822; nobody@contoso.example")
    );
    let text = String::from_utf8_lossy(&sent[0].mime);
    assert!(text.contains("ErrorInvalidRecipients"), "{text}");
    // The bounce's header names its one envelope recipient: nothing to rewrite.
    let header = &text[..text.find("\r\n\r\n").unwrap()];
    assert!(
        header.contains("\r\nTo: <scanner@contoso.example>\r\n") && !header.contains("Bcc:"),
        "{header}"
    );
    assert!(wait_spool_empty(dir.path()).await);
    relay.shutdown().await;
}
