//! Who may have a session: the connect-time lists (IIS: Access → Connection control) and the
//! number of connections one client address may hold at once.

use crate::config::{ListenerConfig, canonical_ip};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// `deny_from` wins over `allow_from`; an empty `allow_from` lets everyone else in.
pub(super) fn may_connect(config: &ListenerConfig, ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    if config.deny_from.iter().any(|net| net.contains(&ip)) {
        return false;
    }
    config.allow_from.is_empty() || config.allow_from.iter().any(|net| net.contains(&ip))
}

/// Open connections per client address on one listener.
#[derive(Debug)]
pub(super) struct ConnectionsPerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it frees the place.
pub(super) struct Slot {
    owner: Arc<ConnectionsPerIp>,
    ip: IpAddr,
}

impl ConnectionsPerIp {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionsPerIp {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, or `None` when it already has `max`.
    pub(super) fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = canonical_ip(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            owner: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(allow: &[&str], deny: &[&str]) -> ListenerConfig {
        let mut config = ListenerConfig::plain("127.0.0.1:25".parse().unwrap(), Vec::new());
        config.allow_from = allow.iter().map(|n| n.parse().unwrap()).collect();
        config.deny_from = deny.iter().map(|n| n.parse().unwrap()).collect();
        config
    }

    #[test]
    fn deny_wins_and_empty_allow_means_everyone() {
        let cases = [
            (listener(&[], &[]), "10.0.0.1", true),
            (listener(&[], &["10.0.0.0/8"]), "10.0.0.1", false),
            (listener(&[], &["10.0.0.0/8"]), "192.168.1.1", true),
            (listener(&["10.0.0.0/8"], &[]), "192.168.1.1", false),
            (
                listener(&["10.0.0.0/8"], &["10.0.0.66/32"]),
                "10.0.0.66",
                false,
            ),
            (
                listener(&["10.0.0.0/8"], &["10.0.0.66/32"]),
                "10.0.0.67",
                true,
            ),
            // An IPv4 client on a dual-stack socket.
            (listener(&["10.0.0.0/8"], &[]), "::ffff:10.1.2.3", true),
            (listener(&[], &["10.0.0.0/8"]), "::ffff:10.1.2.3", false),
            (listener(&["2001:db8::/32"], &[]), "2001:db8::1", true),
        ];
        for (config, ip, expected) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                may_connect(&config, ip),
                expected,
                "{ip} allow {:?} deny {:?}",
                config.allow_from,
                config.deny_from
            );
        }
    }

    #[test]
    fn per_ip_places_are_counted_and_freed() {
        let limit = ConnectionsPerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limit.try_take(a).unwrap();
        let _second = limit.try_take("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        assert!(limit.try_take(a).is_none());
        let other = limit.try_take(b).unwrap();
        drop(first);
        assert_eq!(limit.open(a), 1);
        assert!(limit.try_take(a).is_some());
        drop(other);
        assert_eq!(limit.open(b), 0);
        assert!(limit.open.lock().unwrap().get(&b).is_none());
    }
}
