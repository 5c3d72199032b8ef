//! What the relay does for each control request. Independent of the transport, so the admin HTTP API
//! can call the same [`ControlHandler::handle`].

use super::protocol::{Request, Response};
use crate::bounce::badmail::Badmail;
use crate::ingest::{Ingest, Origin, Submission};
use crate::queue::Queue;
use crate::spool;
use std::sync::{Arc, OnceLock};

/// Reads the configuration again ([`Request::Reload`]): `Ok` says what changed, `Err` why the
/// running configuration stays. Blocking (files are read).
pub trait Reload: Send + Sync + std::fmt::Debug {
    fn reload(&self) -> Result<String, String>;
}

/// The relay's side of the control requests.
#[derive(Debug)]
pub struct ControlHandler {
    queue: Queue,
    badmail: Arc<Badmail>,
    ingest: Ingest,
    reload: OnceLock<Arc<dyn Reload>>,
}

impl ControlHandler {
    pub fn new(queue: Queue, badmail: Arc<Badmail>, ingest: Ingest) -> Self {
        ControlHandler {
            queue,
            badmail,
            ingest,
            reload: OnceLock::new(),
        }
    }

    /// What [`Request::Reload`] does; without it the request is refused.
    pub fn set_reload(&self, reload: Arc<dyn Reload>) {
        let _ = self.reload.set(reload);
    }

    pub async fn handle(&self, request: Request) -> Response {
        match request {
            Request::List => Response::List(self.queue.list()),
            Request::Show { id } => match self.queue.show(&queue_id(&id)).await {
                Ok(detail) => Response::Show(detail),
                Err(e) => Response::error(e.to_string()),
            },
            Request::Retry { id } => {
                let id = queue_id(&id);
                match self.queue.retry(&id) {
                    Ok(()) => Response::ok(format!("message {id} will be tried now")),
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::RetryAll => {
                let n = self.queue.retry_all();
                Response::ok(format!(
                    "{n} {} will be tried now",
                    if n == 1 { "message" } else { "messages" }
                ))
            }
            Request::Hold { id } => {
                let id = queue_id(&id);
                match self.queue.hold(&id).await {
                    Ok(()) => Response::ok(format!(
                        "message {id} is held: it will not be delivered until `smarthost queue release {id}`"
                    )),
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Release { id } => {
                let id = queue_id(&id);
                match self.queue.release(&id).await {
                    Ok(()) => Response::ok(format!("message {id} is released")),
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Delete { id } => {
                let id = queue_id(&id);
                match self.queue.delete(&id).await {
                    Ok(()) => Response::ok(format!("message {id} deleted (no bounce sent)")),
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Bounce { id } => {
                let id = queue_id(&id);
                match self.queue.bounce(&id).await {
                    Ok(()) => Response::ok(format!(
                        "message {id} bounced: its undelivered recipients failed and the sender is told"
                    )),
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::BadmailList => {
                let badmail = self.badmail.clone();
                match blocking(move || badmail.list()).await {
                    Ok(records) => Response::BadmailList(records),
                    Err(e) => Response::error(format!("cannot read the badmail folder: {e}")),
                }
            }
            Request::BadmailShow { name } => {
                let badmail = self.badmail.clone();
                let shown = name.clone();
                match blocking(move || badmail.show(&shown)).await {
                    Ok((record, report, headers)) => Response::BadmailShow {
                        record,
                        report,
                        headers,
                    },
                    Err(e) => Response::error(badmail_error(&name, &e)),
                }
            }
            Request::BadmailResubmit { name } => self.resubmit(name).await,
            Request::Reload => {
                let Some(reload) = self.reload.get().cloned() else {
                    return Response::error("this relay cannot reload its configuration");
                };
                match tokio::task::spawn_blocking(move || reload.reload()).await {
                    Ok(Ok(message)) => Response::ok(message),
                    Ok(Err(message)) => Response::error(message),
                    Err(e) => Response::error(format!("the reload failed: {e}")),
                }
            }
        }
    }

    /// Queues a badmail message again, to the recipients it had not reached.
    async fn resubmit(&self, name: String) -> Response {
        let badmail = self.badmail.clone();
        let read = name.clone();
        let (record, content) = match blocking(move || badmail.read_for_resubmit(&read)).await {
            Ok(found) => found,
            Err(e) => return Response::error(badmail_error(&name, &e)),
        };
        let undelivered: Vec<String> = record
            .recipients
            .iter()
            .filter(|r| r.state != "delivered")
            .map(|r| r.address.clone())
            .collect();
        // Nothing undelivered recorded: the administrator asks for it anyway, so to all of them.
        let recipients = if undelivered.is_empty() {
            record
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect()
        } else {
            undelivered
        };
        if recipients.is_empty() {
            return Response::error(format!(
                "badmail {name} records no recipients: nothing to resubmit to"
            ));
        }
        let smtputf8 = !record.sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        let count = recipients.len();
        let submission = Submission {
            sender: record.sender.clone(),
            recipients,
            smtputf8,
            origin: Origin {
                source: "badmail",
                client_ip: None,
                helo: None,
                protocol: "local",
            },
        };
        let new_id = match self.ingest.submit(submission, content).await {
            Ok(id) => id,
            Err(e) => return Response::error(format!("cannot resubmit badmail {name}: {e}")),
        };
        tracing::info!(badmail = %name, queue_id = %new_id, recipients = count, "badmail resubmitted");
        let badmail = self.badmail.clone();
        let (marked, marked_id) = (name.clone(), new_id.clone());
        if let Err(e) =
            blocking(move || badmail.mark_resubmitted(&marked, &marked_id, spool::unix_now())).await
        {
            // The message is queued; only the note in the badmail folder is missing.
            tracing::warn!(badmail = %name, queue_id = %new_id, error = %e, "cannot mark badmail as resubmitted");
        }
        Response::ok(format!(
            "badmail {name} resubmitted as message {new_id} to {count} {}",
            if count == 1 {
                "recipient"
            } else {
                "recipients"
            }
        ))
    }
}

/// Queue ids are upper-case hex; accept what an administrator types in lower case.
fn queue_id(id: &str) -> String {
    let upper = id.trim().to_ascii_uppercase();
    if spool::is_queue_id(&upper) {
        upper
    } else {
        id.to_string()
    }
}

/// The badmail folder's errors name the entry already; a missing one also says where to look.
fn badmail_error(name: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("no badmail entry named {name} (see `smarthost badmail list`)")
    } else {
        e.to_string()
    }
}

/// Badmail files are read with blocking I/O, away from the runtime's worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
