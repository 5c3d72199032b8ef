//! The wire format: one [`Request`] line from the client, one [`Response`] line from the relay.
//!
//! ```text
//! → {"command":"show","id":"0611F0E2D3C4B0001"}
//! ← {"response":"show","data":{"info":{...},"headers":"...","history":[...]}}
//! → {"command":"retry_all"}
//! ← {"response":"ok","data":{"message":"3 messages will be tried now"}}
//! ```

use crate::bounce::badmail::BadmailRecord;
use crate::queue::view::{MessageDetail, MessageInfo};
use serde::{Deserialize, Serialize};

/// The longest request line the relay reads (requests are small; this bounds a confused client).
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// What the command line asks for. `Reload` reads the configuration file again, as SIGHUP does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    List,
    Show { id: String },
    Retry { id: String },
    RetryAll,
    Hold { id: String },
    Release { id: String },
    Delete { id: String },
    Bounce { id: String },
    BadmailList,
    BadmailShow { name: String },
    BadmailResubmit { name: String },
    Reload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", content = "data", rename_all = "snake_case")]
pub enum Response {
    /// Done; `message` says what happened, for people.
    Ok {
        message: String,
    },
    List(Vec<MessageInfo>),
    Show(MessageDetail),
    BadmailList(Vec<BadmailRecord>),
    BadmailShow {
        record: BadmailRecord,
        /// The reason file (`.bdr`) as written.
        report: String,
        /// The header section of the message.
        headers: String,
    },
    /// The request could not be carried out (unknown id, message busy, ...).
    Error {
        message: String,
    },
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
        }
    }

    pub fn ok(message: impl Into<String>) -> Response {
        Response::Ok {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_readable_wire_form_and_round_trip() {
        let cases = [
            (Request::List, r#"{"command":"list"}"#),
            (Request::RetryAll, r#"{"command":"retry_all"}"#),
            (Request::Reload, r#"{"command":"reload"}"#),
            (
                Request::Show { id: "A1".into() },
                r#"{"command":"show","id":"A1"}"#,
            ),
            (
                Request::BadmailResubmit { name: "B2".into() },
                r#"{"command":"badmail_resubmit","name":"B2"}"#,
            ),
        ];
        for (request, wire) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), wire);
            assert_eq!(serde_json::from_str::<Request>(wire).unwrap(), request);
        }
    }

    #[test]
    fn responses_round_trip_including_sequences() {
        let wire = serde_json::to_string(&Response::List(Vec::new())).unwrap();
        assert_eq!(wire, r#"{"response":"list","data":[]}"#);
        assert!(matches!(
            serde_json::from_str::<Response>(&wire).unwrap(),
            Response::List(v) if v.is_empty()
        ));
        let wire = serde_json::to_string(&Response::error("no such id")).unwrap();
        assert_eq!(
            wire,
            r#"{"response":"error","data":{"message":"no such id"}}"#
        );
    }

    #[test]
    fn an_unknown_command_is_an_error_not_a_default() {
        assert!(serde_json::from_str::<Request>(r#"{"command":"flush"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"show"}"#).is_err());
    }
}
