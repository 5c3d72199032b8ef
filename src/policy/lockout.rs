//! Locking out client addresses that keep failing AUTH (`[auth_lockout]`).
//!
//! Invariants:
//! - Failures count per client address (IPv4-mapped IPv6 addresses as IPv4, so a dual-stack
//!   socket does not double an address's allowance), in a fixed window that starts at the first
//!   failure: `max_failures` failures before `first + window` lock the address until `now +
//!   duration`. A lock is not extended by failures during it; once it expires the count starts over.
//!   `max_failures = 0` turns locking off.
//! - A success forgets the address's failures (not a lock that is in force).
//! - Parallel attempts count too: a password is checked only under a [`Turn`], and an address gets
//!   no more turns at once than the failures it has left before the lock (`max_failures` minus its
//!   failures in the window). Further attempts wait for a turn ([`Lockout::turn_released`]) and are
//!   refused if the address is locked by then. (Hardening finding, issue 8: the lock was checked
//!   before and counted after the check, so 40 passwords sent on 40 connections at once were all
//!   tried where 3 were allowed, and a right one among them logged in after the lock.)
//! - Memory is bounded: at most [`MAX_TRACKED`] addresses. Entries whose window and lock have both
//!   passed are pruned (at most once a minute, and whenever the table is full); when it is still
//!   full, the unlocked address with the oldest window makes room, so a flood of new addresses
//!   cannot unlock the ones already locked. Only when every tracked address is locked does a new
//!   one go untracked.
//! - Time is seconds since the Unix epoch, passed in (tests need no sleeping).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::{AuthLockout, canonical_ip};

/// The most addresses tracked at once (roughly 5 MB).
pub const MAX_TRACKED: usize = 100_000;

/// Pruning of stale entries runs at most this often (seconds), apart from when the table is full.
const PRUNE_EVERY: u64 = 60;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: u64,
    failures: u32,
    /// Locked until this time (exclusive), if locked.
    locked_until: Option<u64>,
    /// Password checks from this address under way ([`Turn`]s not finished).
    in_flight: u32,
}

impl Entry {
    fn is_locked(&self, now: u64) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    fn window_over(&self, now: u64, window: u64) -> bool {
        self.window_start.saturating_add(window) <= now
    }

    /// Nothing left to remember: the window is over, no lock is in force, no check under way.
    fn is_stale(&self, now: u64, window: u64) -> bool {
        !self.is_locked(now) && self.in_flight == 0 && self.window_over(now, window)
    }
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    next_prune: u64,
}

/// Which addresses may not try AUTH now. Thread-safe; share it in an `Arc`.
#[derive(Debug)]
pub struct Lockout {
    max_failures: u32,
    window: u64,
    duration: u64,
    capacity: usize,
    table: Mutex<Table>,
    /// Woken whenever a [`Turn`] ends.
    released: tokio::sync::Notify,
}

/// What [`Lockout::try_turn`] decided for one password check.
#[derive(Debug)]
pub enum TurnDecision {
    /// Check the password, then [`Turn::finish`] with the outcome.
    Go(Turn),
    /// Locked until then (seconds since the epoch): do not check the password.
    Locked(u64),
    /// The checks under way could lock the address: wait for [`Lockout::turn_released`], then ask
    /// again.
    Wait,
}

/// The right to check one password from one address; dropping it unfinished gives the turn back
/// without counting anything.
#[derive(Debug)]
pub struct Turn {
    lockout: Arc<Lockout>,
    ip: IpAddr,
    /// Whether `in_flight` of the address was raised for it (not when locking is off or the table
    /// is full of locked addresses).
    counted: bool,
    finished: bool,
}

impl Turn {
    /// Records the outcome of the check (as [`Lockout::record_failure`] / [`Lockout::record_success`]);
    /// true when this failure locked the address.
    pub fn finish(mut self, verified: bool, now: u64) -> bool {
        self.finished = true;
        // Counted before the turn is given back: a waiting attempt must see this failure.
        let locked = if verified {
            self.lockout.record_success(self.ip);
            false
        } else {
            self.lockout.record_failure(self.ip, now)
        };
        self.release();
        locked
    }

    fn release(&self) {
        if self.counted {
            let mut table = self.lockout.lock();
            if let Some(entry) = table.entries.get_mut(&self.ip) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
            }
        }
        self.lockout.released.notify_waiters();
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.finished {
            self.release();
        }
    }
}

impl Lockout {
    pub fn new(config: AuthLockout) -> Lockout {
        Lockout::with_capacity(config, MAX_TRACKED)
    }

    fn with_capacity(config: AuthLockout, capacity: usize) -> Lockout {
        Lockout {
            max_failures: config.max_failures,
            window: config.window.as_secs().max(1),
            duration: config.duration.as_secs().max(1),
            capacity: capacity.max(1),
            table: Mutex::new(Table::default()),
            released: tokio::sync::Notify::new(),
        }
    }

    /// Asks for a turn to check one password from `ip` (see the module docs).
    pub fn try_turn(self: &Arc<Self>, ip: IpAddr, now: u64) -> TurnDecision {
        let ip = canonical_ip(ip);
        let uncounted = || {
            TurnDecision::Go(Turn {
                lockout: Arc::clone(self),
                ip,
                counted: false,
                finished: false,
            })
        };
        if self.max_failures == 0 {
            return uncounted();
        }
        let mut table = self.lock();
        if now >= table.next_prune || table.entries.len() >= self.capacity {
            self.prune(&mut table, now);
        }
        if !table.entries.contains_key(&ip) && !self.make_room(&mut table, now) {
            // As record_failure: a failure here would not be counted either.
            return uncounted();
        }
        let entry = table.entries.entry(ip).or_insert(Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
            in_flight: 0,
        });
        if let Some(until) = entry.locked_until.filter(|_| entry.is_locked(now)) {
            return TurnDecision::Locked(until);
        }
        if entry.locked_until.is_some() || entry.window_over(now, self.window) {
            *entry = Entry {
                window_start: now,
                failures: 0,
                locked_until: None,
                in_flight: entry.in_flight,
            };
        }
        if entry.failures.saturating_add(entry.in_flight) >= self.max_failures {
            return TurnDecision::Wait;
        }
        entry.in_flight += 1;
        TurnDecision::Go(Turn {
            lockout: Arc::clone(self),
            ip,
            counted: true,
            finished: false,
        })
    }

    /// Completes when a turn ends. Create it before [`Lockout::try_turn`] answers `Wait` (and
    /// `enable` it), so that a turn ending in between is not missed.
    pub fn turn_released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// `Some(until)` while `ip` is locked out (seconds since the epoch when the lock ends).
    pub fn is_locked(&self, ip: IpAddr, now: u64) -> Option<u64> {
        let ip = canonical_ip(ip);
        let table = self.lock();
        table
            .entries
            .get(&ip)
            .filter(|entry| entry.is_locked(now))
            .and_then(|entry| entry.locked_until)
    }

    /// Counts a failed AUTH from `ip`; true when this failure locked the address.
    pub fn record_failure(&self, ip: IpAddr, now: u64) -> bool {
        crate::admin::metrics::metrics().auth_failures.inc();
        if self.max_failures == 0 {
            return false;
        }
        let ip = canonical_ip(ip);
        let mut table = self.lock();
        if now >= table.next_prune || table.entries.len() >= self.capacity {
            self.prune(&mut table, now);
        }
        if !table.entries.contains_key(&ip) && !self.make_room(&mut table, now) {
            tracing::warn!(
                %ip,
                tracked = table.entries.len(),
                "failed AUTH not counted: every tracked address is locked out"
            );
            return false;
        }
        let entry = table.entries.entry(ip).or_insert(Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
            in_flight: 0,
        });
        if entry.is_locked(now) {
            return false;
        }
        // A lock that has run out, or a window that has: the count starts over.
        if entry.locked_until.is_some() || entry.window_over(now, self.window) {
            *entry = Entry {
                window_start: now,
                failures: 0,
                locked_until: None,
                in_flight: entry.in_flight,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures < self.max_failures {
            return false;
        }
        let until = now.saturating_add(self.duration);
        let failures = entry.failures;
        entry.locked_until = Some(until);
        tracing::warn!(
            %ip,
            failures,
            window_secs = self.window,
            lock_secs = self.duration,
            until,
            "client address locked out after failed AUTH attempts"
        );
        true
    }

    /// Forgets the failures of `ip` after a successful AUTH (a lock in force stays).
    pub fn record_success(&self, ip: IpAddr) {
        let ip = canonical_ip(ip);
        let mut table = self.lock();
        if let Some(entry) = table.entries.get_mut(&ip)
            && entry.locked_until.is_none()
        {
            if entry.in_flight == 0 {
                table.entries.remove(&ip);
            } else {
                // Other checks are under way: keep their turns, forget the failures.
                entry.failures = 0;
            }
        }
    }

    /// Addresses tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table stays consistent across a panic elsewhere: every update is a single assignment.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn prune(&self, table: &mut Table, now: u64) {
        let window = self.window;
        table
            .entries
            .retain(|_, entry| !entry.is_stale(now, window));
        table.next_prune = now.saturating_add(PRUNE_EVERY);
    }

    /// Frees a place for one more address when the table is full; false when all are locked.
    fn make_room(&self, table: &mut Table, now: u64) -> bool {
        if table.entries.len() < self.capacity {
            return true;
        }
        let oldest = table
            .entries
            .iter()
            .filter(|(_, entry)| !entry.is_locked(now) && entry.in_flight == 0)
            .min_by_key(|(_, entry)| entry.window_start)
            .map(|(ip, _)| *ip);
        match oldest {
            Some(ip) => {
                table.entries.remove(&ip);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lockout(max_failures: u32) -> Lockout {
        Lockout::new(AuthLockout {
            max_failures,
            window: Duration::from_secs(600),
            duration: Duration::from_secs(1800),
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// (seconds since start, event, expected result).
    enum Step {
        Fail(u64, &'static str, bool),
        Success(&'static str),
        Locked(u64, &'static str, Option<u64>),
    }

    fn run(lockout: &Lockout, steps: &[Step]) {
        const T0: u64 = 1_700_000_000;
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Step::Fail(t, addr, expected) => assert_eq!(
                    lockout.record_failure(ip(addr), T0 + t),
                    expected,
                    "step {i}: failure from {addr} at {t}"
                ),
                Step::Success(addr) => lockout.record_success(ip(addr)),
                Step::Locked(t, addr, expected) => assert_eq!(
                    lockout.is_locked(ip(addr), T0 + t),
                    expected.map(|until| T0 + until),
                    "step {i}: {addr} at {t}"
                ),
            }
        }
    }

    use Step::*;

    #[test]
    fn the_fifth_failure_in_the_window_locks_for_the_duration() {
        run(
            &lockout(5),
            &[
                Fail(0, "10.0.0.1", false),
                Fail(1, "10.0.0.1", false),
                Fail(2, "10.0.0.1", false),
                Fail(3, "10.0.0.1", false),
                Locked(3, "10.0.0.1", None),
                Fail(4, "10.0.0.1", true),
                Locked(4, "10.0.0.1", Some(1804)),
                Locked(1803, "10.0.0.1", Some(1804)),
                Locked(1804, "10.0.0.1", None),
                // Other addresses are not affected.
                Locked(4, "10.0.0.2", None),
                Locked(4, "::1", None),
            ],
        );
    }

    #[test]
    fn failures_during_a_lock_neither_extend_nor_relock_it() {
        run(
            &lockout(2),
            &[
                Fail(0, "10.0.0.1", false),
                Fail(10, "10.0.0.1", true),
                Fail(20, "10.0.0.1", false),
                Fail(1000, "10.0.0.1", false),
                Locked(1000, "10.0.0.1", Some(1810)),
                // After the lock the count starts over.
                Fail(1810, "10.0.0.1", false),
                Locked(1810, "10.0.0.1", None),
                Fail(1811, "10.0.0.1", true),
                Locked(1811, "10.0.0.1", Some(3611)),
            ],
        );
    }

    #[test]
    fn a_lock_shorter_than_the_window_also_starts_a_new_count() {
        let lockout = Lockout::new(AuthLockout {
            max_failures: 2,
            window: Duration::from_secs(600),
            duration: Duration::from_secs(60),
        });
        run(
            &lockout,
            &[
                Fail(0, "10.0.0.1", false),
                Fail(1, "10.0.0.1", true),
                Locked(61, "10.0.0.1", None),
                Fail(62, "10.0.0.1", false),
                Fail(63, "10.0.0.1", true),
            ],
        );
    }

    #[test]
    fn failures_outside_the_window_start_a_new_count() {
        run(
            &lockout(3),
            &[
                Fail(0, "10.0.0.1", false),
                Fail(1, "10.0.0.1", false),
                Fail(600, "10.0.0.1", false),
                Fail(601, "10.0.0.1", false),
                Fail(1199, "10.0.0.1", true),
            ],
        );
    }

    #[test]
    fn a_success_forgets_the_failures_but_not_a_lock() {
        run(
            &lockout(3),
            &[
                Fail(0, "10.0.0.1", false),
                Fail(1, "10.0.0.1", false),
                Success("10.0.0.1"),
                Fail(2, "10.0.0.1", false),
                Fail(3, "10.0.0.1", false),
                Fail(4, "10.0.0.1", true),
                Success("10.0.0.1"),
                Locked(5, "10.0.0.1", Some(1804)),
            ],
        );
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        run(
            &lockout(2),
            &[
                Fail(0, "::ffff:10.0.0.1", false),
                Fail(1, "10.0.0.1", true),
                Locked(2, "::ffff:10.0.0.1", Some(1801)),
                Locked(2, "10.0.0.1", Some(1801)),
                Locked(2, "2001:db8::1", None),
            ],
        );
    }

    #[test]
    fn zero_max_failures_never_locks() {
        let lockout = lockout(0);
        run(
            &lockout,
            &[Fail(0, "10.0.0.1", false), Fail(1, "10.0.0.1", false)],
        );
        assert_eq!(lockout.tracked(), 0);
    }

    #[test]
    fn stale_entries_are_pruned() {
        let lockout = lockout(3);
        for i in 0..100u32 {
            lockout.record_failure(IpAddr::from(i.to_be_bytes()), 1000);
        }
        assert_eq!(lockout.tracked(), 100);
        lockout.record_failure(ip("10.0.0.1"), 1000 + 599);
        assert_eq!(lockout.tracked(), 101);
        // Pruning runs at most once a minute (the last was at 1599).
        lockout.record_failure(ip("10.0.0.2"), 1000 + 600);
        assert_eq!(lockout.tracked(), 102);
        lockout.record_failure(ip("10.0.0.3"), 1599 + 60);
        assert_eq!(lockout.tracked(), 3);
    }

    #[test]
    fn a_full_table_evicts_unlocked_addresses_but_keeps_locks() {
        let lockout = Lockout::with_capacity(
            AuthLockout {
                max_failures: 2,
                window: Duration::from_secs(600),
                duration: Duration::from_secs(1800),
            },
            3,
        );
        let t = 1_700_000_000;
        assert!(!lockout.record_failure(ip("10.0.0.1"), t));
        assert!(lockout.record_failure(ip("10.0.0.1"), t));
        assert!(!lockout.record_failure(ip("10.0.0.2"), t + 1));
        assert!(!lockout.record_failure(ip("10.0.0.3"), t + 2));
        // Full: the oldest unlocked (10.0.0.2) makes room; the lock of 10.0.0.1 stays.
        assert!(!lockout.record_failure(ip("10.0.0.4"), t + 3));
        assert_eq!(lockout.tracked(), 3);
        assert!(lockout.is_locked(ip("10.0.0.1"), t + 3).is_some());
        assert!(
            !lockout.record_failure(ip("10.0.0.2"), t + 4),
            "was forgotten"
        );
        assert!(lockout.record_failure(ip("10.0.0.4"), t + 5));
        assert!(lockout.record_failure(ip("10.0.0.2"), t + 6));
        // Every tracked address is locked: a new one is not tracked, the locks stay.
        assert!(!lockout.record_failure(ip("10.0.0.5"), t + 7));
        assert!(!lockout.record_failure(ip("10.0.0.5"), t + 8));
        assert_eq!(lockout.tracked(), 3);
        for locked in ["10.0.0.1", "10.0.0.2", "10.0.0.4"] {
            assert!(lockout.is_locked(ip(locked), t + 8).is_some(), "{locked}");
        }
    }

    #[test]
    fn the_lockout_is_shareable_between_threads() {
        let lockout = std::sync::Arc::new(lockout(100));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lockout = lockout.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .filter(|_| lockout.record_failure(ip("10.0.0.9"), 1_700_000_000))
                        .count()
                })
            })
            .collect();
        let locked: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(locked, 1, "exactly the hundredth failure locks");
    }

    /// Hardening finding (issue 8): no more password checks at once than failures left; the others
    /// wait, then find the address locked; a success in between gives the allowance back.
    #[test]
    fn parallel_attempts_get_no_more_turns_than_failures_left() {
        let t = 1_700_000_000;
        let lockout = std::sync::Arc::new(lockout(3));
        let a = ip("10.0.0.1");
        let turns: Vec<Turn> = (0..3)
            .map(|_| match lockout.try_turn(a, t) {
                TurnDecision::Go(turn) => turn,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(matches!(lockout.try_turn(a, t), TurnDecision::Wait));
        // Another address is not affected.
        assert!(matches!(
            lockout.try_turn(ip("10.0.0.2"), t),
            TurnDecision::Go(_)
        ));
        let mut locked = Vec::new();
        for turn in turns {
            locked.push(turn.finish(false, t + 1));
        }
        assert_eq!(locked, [false, false, true]);
        assert!(
            matches!(lockout.try_turn(a, t + 2), TurnDecision::Locked(until) if until == t + 1801)
        );
        // A turn given back unfinished counts nothing; a success forgets the failures.
        let b = ip("10.0.0.3");
        let TurnDecision::Go(first) = lockout.try_turn(b, t) else {
            panic!()
        };
        assert!(!first.finish(false, t));
        let TurnDecision::Go(dropped) = lockout.try_turn(b, t) else {
            panic!()
        };
        let TurnDecision::Go(ok) = lockout.try_turn(b, t) else {
            panic!()
        };
        assert!(matches!(lockout.try_turn(b, t), TurnDecision::Wait));
        drop(dropped);
        assert!(!ok.finish(true, t));
        for _ in 0..3 {
            assert!(matches!(lockout.try_turn(b, t), TurnDecision::Go(_)));
        }
    }
}
