//! The SMTP client transport. (Being written: see issue 2.)

use super::{OutboundMessage, RecipientResult};
use crate::config::SmtpRoute;

#[derive(Debug)]
pub struct SmtpTransport {
    route: SmtpRoute,
    helo_name: String,
}

impl SmtpTransport {
    pub fn new(route: &SmtpRoute, helo_name: String) -> anyhow::Result<Self> {
        Ok(SmtpTransport {
            route: route.clone(),
            helo_name,
        })
    }

    pub async fn deliver(&self, msg: &OutboundMessage<'_>) -> Vec<RecipientResult> {
        let _ = (&self.route, &self.helo_name, msg);
        todo!("smtp client helper")
    }
}
