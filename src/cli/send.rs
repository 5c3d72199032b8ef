//! `smarthost send`: write a message (text or HTML body, attachments) and send it, the
//! `Send-MailMessage` of smarthost.
//!
//! Directly (default): to `--server`/`--port` through the relay's own SMTP client
//! ([`SmtpTransport`]), so TLS verification (system roots plus `--ca-file`), AUTH and PIPELINING
//! behave as on a route. One line per recipient with the server's reply; exit status 0 when every
//! recipient was accepted, 1 otherwise, 2 for bad arguments.
//!
//! `--via-queue`: into the local relay's Pickup folder (`data_dir/pickup`) under a dot-name, then
//! renamed (the Pickup folder's safe way); the envelope goes in `x-sender:`/`x-receiver:` lines, so
//! Bcc recipients are delivered without a `Bcc:` header. The relay queues it within seconds.
//!
//! The password is read from the environment variable named by `--password-env`, never from the
//! command line, and is never printed (the transport's replies and reasons carry no secret).

pub mod mime;

use crate::cli::queue::{CommandError, Target};
use crate::config::{
    self, AuthConfig, AuthMechanism, Credential, Secret, SmtpRoute, TlsMode as RouteTls,
};
use crate::deliver::smtp::SmtpTransport;
use crate::deliver::{OutboundMessage, RecipientResult};
use clap::{Args, ValueEnum};
use mime::{Attachment, Mailbox, Message};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendTls {
    /// STARTTLS, required (the certificate is verified).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS (only for servers on the same machine or network).
    None,
}

/// The options of `smarthost send`.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Recipient (repeat the option or separate with commas); "Name <addr>" works too.
    #[arg(long, value_delimiter = ',', value_name = "ADDRESS")]
    pub to: Vec<String>,
    /// Copy recipient (shown in Cc:).
    #[arg(long, value_delimiter = ',', value_name = "ADDRESS")]
    pub cc: Vec<String>,
    /// Blind copy recipient (in the envelope only, never in the header).
    #[arg(long, value_delimiter = ',', value_name = "ADDRESS")]
    pub bcc: Vec<String>,
    /// The sender: envelope and From: header.
    #[arg(long, value_name = "ADDRESS")]
    pub from: String,
    /// The subject (any Unicode).
    #[arg(long, default_value = "")]
    pub subject: String,
    /// The body text.
    #[arg(long, value_name = "TEXT", conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the body (UTF-8) from FILE; "-" reads stdin.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// The body is HTML (text/html).
    #[arg(long)]
    pub html: bool,
    /// Attach FILE (repeatable); the content type comes from the extension.
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// The SMTP server to send to.
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub server: String,
    /// Its port (default 25; 465 with --tls implicit).
    #[arg(long)]
    pub port: Option<u16>,
    /// TLS: starttls (required), implicit or none. Certificates are always verified.
    #[arg(long, value_enum, default_value_t = SendTls::Starttls)]
    pub tls: SendTls,
    /// Extra CA certificates (PEM) to trust besides the system's.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// AUTH LOGIN with this user name (needs --password-env).
    #[arg(long, requires = "password_env")]
    pub user: Option<String>,
    /// The environment variable that holds the password.
    #[arg(long, value_name = "VAR", requires = "user")]
    pub password_env: Option<String>,
    /// The name sent in EHLO (default: this machine's host name).
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
    /// Hand the message to the local relay through its Pickup folder instead of sending it.
    #[arg(long, conflicts_with_all = ["user", "password_env", "ca_file", "port", "server", "helo"])]
    pub via_queue: bool,
    /// With --via-queue: the relay's configuration file (for its data_dir).
    #[arg(long, short, value_name = "FILE", requires = "via_queue")]
    pub config: Option<PathBuf>,
    /// With --via-queue: the relay's data directory.
    #[arg(long, value_name = "DIR", requires = "via_queue")]
    pub data_dir: Option<PathBuf>,
}

fn usage(message: impl Into<String>) -> CommandError {
    CommandError::Usage(message.into())
}

/// Runs `smarthost send`; prints the outcome on stdout.
pub fn run(args: &SendArgs) -> Result<(), CommandError> {
    let hostname = config::default_config().hostname;
    let prepared = prepare(args, &hostname)?;
    if args.via_queue {
        let target = Target {
            config: args.config.clone(),
            data_dir: args.data_dir.clone(),
        };
        let path = write_pickup(&target.resolve_data_dir()?, &prepared)?;
        println!(
            "queued for {} recipient(s) through the Pickup folder: {}",
            prepared.recipients.len(),
            path.display()
        );
        return Ok(());
    }
    send_direct(args, &prepared, hostname)
}

/// The envelope and the content.
struct Prepared {
    sender: String,
    recipients: Vec<String>,
    content: Vec<u8>,
}

fn mailboxes(list: &[String], option: &str) -> Result<Vec<Mailbox>, CommandError> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Mailbox::parse(s).map_err(|e| usage(format!("--{option}: {e}"))))
        .collect()
}

fn prepare(args: &SendArgs, hostname: &str) -> Result<Prepared, CommandError> {
    let from = Mailbox::parse(&args.from).map_err(|e| usage(format!("--from: {e}")))?;
    let to = mailboxes(&args.to, "to")?;
    let cc = mailboxes(&args.cc, "cc")?;
    let bcc = mailboxes(&args.bcc, "bcc")?;
    let mut recipients: Vec<String> = Vec::new();
    for mailbox in to.iter().chain(&cc).chain(&bcc) {
        if !recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&mailbox.address))
        {
            recipients.push(mailbox.address.clone());
        }
    }
    if recipients.is_empty() {
        return Err(usage("no recipients: give --to, --cc or --bcc"));
    }
    let body = match (&args.body, &args.body_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => read_body(path)?,
        (None, None) => String::new(),
    };
    let mut attachments = Vec::new();
    for path in &args.attach {
        let data =
            std::fs::read(path).map_err(|e| usage(format!("--attach {}: {e}", path.display())))?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".to_string());
        attachments.push(Attachment {
            content_type: mime::content_type_for(&filename).to_string(),
            filename,
            data,
        });
    }
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .map_err(|e| usage(format!("cannot format the date: {e}")))?;
    let unique: u128 = rand::random();
    let message = Message {
        from: from.clone(),
        to,
        cc,
        subject: args.subject.clone(),
        body,
        html: args.html,
        attachments,
        date,
        message_id: format!("<{unique:032x}@{hostname}>"),
        boundary: format!("=_smarthost_{:032x}", rand::random::<u128>()),
    };
    Ok(Prepared {
        sender: from.address,
        recipients,
        content: mime::build(&message),
    })
}

fn read_body(path: &Path) -> Result<String, CommandError> {
    let mut bytes = Vec::new();
    let result = if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    result.map_err(|e| usage(format!("--body-file {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| usage(format!("--body-file {}: not UTF-8 text", path.display())))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(&text).to_string())
}

fn send_direct(args: &SendArgs, prepared: &Prepared, hostname: String) -> Result<(), CommandError> {
    let auth = match (&args.user, &args.password_env) {
        (Some(user), Some(var)) => {
            let password = std::env::var(var).map_err(|_| {
                usage(format!(
                    "--password-env {var}: the environment variable is not set (or not UTF-8)"
                ))
            })?;
            Some(AuthConfig {
                mechanism: AuthMechanism::Login,
                username: user.clone(),
                credential: Credential::Password(Secret::new(password)),
            })
        }
        _ => None,
    };
    let (tls, default_port) = match args.tls {
        SendTls::Starttls => (RouteTls::StartTls, 25),
        SendTls::Implicit => (RouteTls::Implicit, 465),
        SendTls::None => (RouteTls::None, 25),
    };
    let route = SmtpRoute {
        host: args.server.clone(),
        port: args.port.unwrap_or(default_port),
        tls,
        ca_file: args.ca_file.clone(),
        auth,
        connect_timeout: Duration::from_secs(30),
        command_timeout: Duration::from_secs(120),
        max_connections: 1,
        client_cert: None,
    };
    let helo = args.helo.clone().unwrap_or(hostname);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| usage(format!("cannot start the runtime: {e}")))?;
    let results = runtime.block_on(async {
        let transport = SmtpTransport::new(&route, helo).map_err(|e| usage(format!("{e:#}")))?;
        let smtputf8 =
            !prepared.sender.is_ascii() || prepared.recipients.iter().any(|r| !r.is_ascii());
        let results = transport
            .deliver(&OutboundMessage {
                queue_id: "send",
                sender: &prepared.sender,
                recipients: &prepared.recipients,
                content: &prepared.content,
                smtputf8,
                eight_bit: false,
            })
            .await;
        transport.close().await;
        Ok::<_, CommandError>(results)
    })?;
    let mut undelivered = 0;
    let mut out = std::io::stdout().lock();
    for (recipient, result) in prepared.recipients.iter().zip(&results) {
        let line = match result {
            RecipientResult::Delivered { reply } => format!("delivered {recipient}: {reply}"),
            RecipientResult::Deferred { reason } => {
                undelivered += 1;
                format!("not delivered (temporary) {recipient}: {reason}")
            }
            RecipientResult::Failed { reason } => {
                undelivered += 1;
                format!("not delivered (permanent) {recipient}: {reason}")
            }
        };
        let _ = writeln!(out, "{line}");
    }
    if undelivered == 0 {
        Ok(())
    } else {
        Err(CommandError::Relay(format!(
            "{undelivered} of {} recipient(s) not delivered",
            prepared.recipients.len()
        )))
    }
}

/// Writes `.send-<random>.tmp` in `data_dir/pickup`, syncs it and renames it to
/// `send-<random>.eml`; returns the final path.
fn write_pickup(data_dir: &Path, prepared: &Prepared) -> Result<PathBuf, CommandError> {
    let dir = data_dir.join("pickup");
    if !dir.is_dir() {
        return Err(usage(format!(
            "{}: no Pickup folder (the relay creates it when it starts; is this its data_dir?)",
            dir.display()
        )));
    }
    let mut file_text = format!("x-sender: {}\r\n", prepared.sender).into_bytes();
    for recipient in &prepared.recipients {
        file_text.extend_from_slice(format!("x-receiver: {recipient}\r\n").as_bytes());
    }
    file_text.extend_from_slice(&prepared.content);
    let unique: u64 = rand::random();
    let name = format!("send-{}-{unique:016x}", crate::spool::unix_now());
    let temp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(format!("{name}.eml"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create_new(&temp)?;
        file.write_all(&file_text)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        CommandError::Relay(format!("cannot write into {}: {e}", dir.display()))
    })?;
    Ok(path)
}
