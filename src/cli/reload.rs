//! `smarthost reload`: asks the running relay to read its configuration file again (as `SIGHUP`
//! does) and prints the outcome; a configuration with errors is refused, and they are printed.

use crate::cli::queue::{CommandError, Target, ask, unexpected};
use crate::control::{Request, Response};

pub fn run(target: &Target) -> Result<(), CommandError> {
    let socket = target.socket_path()?;
    match ask(&socket, &Request::Reload)? {
        Response::Ok { message } => {
            println!("{message}");
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}
