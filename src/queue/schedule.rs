//! The retry schedule as pure functions of the time: when the next attempt is due, when a recipient
//! has waited long enough for a delay notice, when it expires. No I/O, no clock: `now` is passed in.

use crate::config::RetrySchedule;
use std::hash::{Hash, Hasher};

/// Waits are spread by up to this fraction either way, so that messages deferred together (an
/// upstream outage) do not all come back in the same second.
const JITTER: f64 = 0.1;

/// The wait after the `attempts`-th failed attempt (1-based), jittered by ±10 % with a value derived
/// from the queue id and the attempt, so the same message gets the same wait after a restart.
pub fn retry_wait(schedule: &RetrySchedule, id: &str, attempts: u32) -> u64 {
    let index = (attempts.max(1) as usize - 1).min(schedule.retry.len() - 1);
    let base = schedule.retry[index].as_secs_f64();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (id, attempts).hash(&mut hasher);
    // A fraction in [-1, 1] from the hash.
    let unit = (hasher.finish() % 2001) as f64 / 1000.0 - 1.0;
    (base * (1.0 + JITTER * unit)).round().max(1.0) as u64
}

/// Unix time after which a recipient accepted at `received_at` is given up on.
pub fn expires_at(schedule: &RetrySchedule, received_at: u64) -> u64 {
    received_at.saturating_add(schedule.expire.as_secs())
}

/// Whether a recipient accepted at `received_at` is due a delay notice at `now`.
pub fn delay_notice_due(schedule: &RetrySchedule, received_at: u64, now: u64) -> bool {
    schedule
        .delay_notice
        .is_some_and(|after| now >= received_at.saturating_add(after.as_secs()))
}

/// When to try next after a failed attempt at `now`: the jittered wait, but never after expiry, so
/// the last attempt happens when the message expires and the bounce follows at once.
pub fn next_attempt(
    schedule: &RetrySchedule,
    id: &str,
    attempts: u32,
    received_at: u64,
    now: u64,
) -> u64 {
    let next = now.saturating_add(retry_wait(schedule, id, attempts));
    next.min(expires_at(schedule, received_at)).max(now + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIN: u64 = 60;

    fn iis() -> RetrySchedule {
        RetrySchedule::default()
    }

    #[test]
    fn iis_defaults_then_every_four_hours_within_jitter() {
        let expected = [
            15 * MIN,
            30 * MIN,
            60 * MIN,
            240 * MIN,
            240 * MIN,
            240 * MIN,
        ];
        for id in ["A", "B", "0001A2B3C4D5E6F70"] {
            for (i, base) in expected.iter().enumerate() {
                let wait = retry_wait(&iis(), id, i as u32 + 1);
                let (lo, hi) = (*base as f64 * 0.9, *base as f64 * 1.1);
                assert!(
                    (lo..=hi).contains(&(wait as f64)),
                    "{id} attempt {}: {wait}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_messages_but_is_stable_per_message() {
        let waits: std::collections::HashSet<u64> = (0..50)
            .map(|i| retry_wait(&iis(), &format!("ID{i}"), 1))
            .collect();
        assert!(waits.len() > 10, "jitter should spread: {waits:?}");
        assert_eq!(retry_wait(&iis(), "X", 3), retry_wait(&iis(), "X", 3));
    }

    #[test]
    fn delay_notice_after_twelve_hours_and_expiry_after_two_days() {
        let s = iis();
        let t0 = 1_000_000;
        assert!(!delay_notice_due(&s, t0, t0 + 12 * 60 * MIN - 1));
        assert!(delay_notice_due(&s, t0, t0 + 12 * 60 * MIN));
        assert_eq!(expires_at(&s, t0), t0 + 48 * 60 * MIN);
        let never = RetrySchedule {
            delay_notice: None,
            ..iis()
        };
        assert!(!delay_notice_due(&never, t0, t0 + 1_000_000));
    }

    #[test]
    fn last_attempt_is_at_expiry() {
        let s = RetrySchedule {
            retry: vec![Duration::from_secs(4 * 3600)],
            delay_notice: None,
            expire: Duration::from_secs(5 * 3600),
        };
        let t0 = 1_000_000;
        // Four hours in, the next four-hour wait would pass expiry: the attempt is at expiry instead.
        assert_eq!(next_attempt(&s, "A", 2, t0, t0 + 4 * 3600), t0 + 5 * 3600);
        // Already expired: at least one second later, never in the past.
        assert_eq!(
            next_attempt(&s, "A", 3, t0, t0 + 6 * 3600),
            t0 + 6 * 3600 + 1
        );
    }
}
