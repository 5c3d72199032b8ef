//! The local accounts of inbound AUTH (`[[user]]`, IIS: Basic authentication) and the senders each
//! may use.
//!
//! Invariants:
//! - Only argon2 hashes (PHC strings, as `smarthost passwd` prints them) are kept; never a password.
//! - User names match exactly (case-sensitive), as SASL compares identities; the configuration
//!   refuses two names that differ only in case, so a device typing `Scanner` for `scanner` fails
//!   instead of reaching another account.
//! - [`UserDb::verify`] costs the same for an unknown user as for a known one: it verifies against a
//!   dummy hash with the parameters most users have, so the time taken does not tell which user
//!   names exist. It is slow by design (tens of milliseconds and ~19 MiB for the defaults): call it
//!   in `spawn_blocking`. At most one verification per core runs at a time; the others wait, so a
//!   burst of AUTH attempts costs time, not memory.
//! - Sender checks compare addresses ASCII-case-insensitively. The null sender (`<>`, bounces and
//!   delivery reports) is always allowed: it claims no one's address.

use argon2::password_hash::{
    Output, PasswordHash, PasswordHasher, PasswordVerifier, Salt, SaltString,
};
use argon2::{Algorithm, Argon2, Params};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, PoisonError};

use crate::config::UserConfig;

/// The largest memory cost accepted in a hash (KiB): 1 GiB. Beyond it every login would risk
/// exhausting the machine; `smarthost passwd` uses 19 MiB.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;

/// The salt of the dummy hash for unknown users; any value works, none matches a real hash.
const DUMMY_SALT: &str = "c21hcnRob3N0LWR1bW15";

/// Hashes `password` for a `[[user]]`: argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane,
/// RFC 9106's second recommended setting) and a random 16-byte salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| HashError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| HashError::Random)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| HashError::Hash)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("the system's random number generator failed")]
    Random,
    #[error("argon2 could not hash the password")]
    Hash,
}

/// Checks that `phc` is an argon2 hash [`UserDb::verify`] can use; the error says what is wrong with
/// it (never repeating it).
pub fn check_password_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc.trim()).map_err(|e| format!("not a PHC string ({e})"))?;
    Algorithm::try_from(hash.algorithm).map_err(|_| {
        format!(
            "the algorithm is {:?}, not argon2id, argon2i or argon2d",
            hash.algorithm.as_str()
        )
    })?;
    if let Some(version) = hash.version {
        argon2::Version::try_from(version)
            .map_err(|_| format!("unknown argon2 version {version}"))?;
    }
    let params = Params::try_from(&hash).map_err(|e| format!("invalid argon2 parameters ({e})"))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("the salt or the hash itself is missing".to_string());
    }
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(format!(
            "m={} asks for more than 1 GiB of memory for every login",
            params.m_cost()
        ));
    }
    Ok(())
}

/// One allowed envelope sender of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// `scanner@contoso.com` (lower-case).
    Address(String),
    /// `*@contoso.com`: any address in that domain (lower-case, not its subdomains).
    Domain(String),
}

impl SenderPattern {
    /// `scanner@contoso.com` or `*@contoso.com`.
    pub fn parse(text: &str) -> Result<SenderPattern, String> {
        let text = text.trim();
        if let Some(domain) = text.strip_prefix("*@") {
            let domain = domain.strip_suffix('.').unwrap_or(domain);
            if !domain.ends_with('.') && crate::config::is_host_name(domain) {
                return Ok(SenderPattern::Domain(domain.to_ascii_lowercase()));
            }
            return Err(format!(
                "{text:?} is not a domain pattern: write \"*@contoso.com\""
            ));
        }
        if crate::smtp::command::is_valid_mailbox(text) {
            return Ok(SenderPattern::Address(text.to_ascii_lowercase()));
        }
        Err(format!(
            "{text:?} is not an address: write local-part@domain (\"scanner@contoso.com\") or a \
             whole domain (\"*@contoso.com\")"
        ))
    }

    fn matches(&self, sender: &str) -> bool {
        match self {
            SenderPattern::Address(address) => sender.eq_ignore_ascii_case(address),
            SenderPattern::Domain(domain) => sender
                .rsplit_once('@')
                .is_some_and(|(local, d)| !local.is_empty() && d.eq_ignore_ascii_case(domain)),
        }
    }
}

struct User {
    /// `None` when the configured hash is unusable: the user can never log in.
    hash: Option<String>,
    /// Empty: any sender.
    allowed_senders: Vec<SenderPattern>,
}

/// The users of inbound AUTH. `Send + Sync`; share it in an `Arc`.
pub struct UserDb {
    users: HashMap<String, User>,
    /// Verified for unknown users, so that they cost what known ones do.
    dummy: String,
    gate: Gate,
}

impl std::fmt::Debug for UserDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("UserDb").field("users", &names).finish()
    }
}

impl UserDb {
    pub fn new(users: &[UserConfig]) -> UserDb {
        let users: HashMap<String, User> = users
            .iter()
            .map(|u| {
                let hash = match check_password_hash(&u.password_hash) {
                    Ok(()) => Some(u.password_hash.trim().to_string()),
                    Err(reason) => {
                        tracing::warn!(user = %u.name, "unusable password_hash: {reason}");
                        None
                    }
                };
                let allowed_senders = u
                    .allowed_senders
                    .iter()
                    .filter_map(|s| match SenderPattern::parse(s) {
                        Ok(p) => Some(p),
                        Err(reason) => {
                            tracing::warn!(user = %u.name, "ignoring allowed sender: {reason}");
                            None
                        }
                    })
                    .collect();
                let user = User {
                    hash,
                    allowed_senders,
                };
                (u.name.clone(), user)
            })
            .collect();
        let dummy = dummy_hash(users.values().filter_map(|u| u.hash.as_deref()));
        UserDb {
            users,
            dummy,
            gate: Gate::new(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
            ),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether `username` exists (exact match) and `password` is its password. Blocks for the time of
    /// one argon2 verification, known user or not.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(username) {
            Some(User {
                hash: Some(hash), ..
            }) => (hash.as_str(), true),
            _ => (self.dummy.as_str(), false),
        };
        let _permit = self.gate.enter();
        let matched = PasswordHash::new(hash).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        });
        matched && known
    }

    /// Whether `username` may use `sender` as the envelope sender (MAIL FROM; with or without the
    /// angle brackets). An unknown user may use none.
    pub fn may_send_as(&self, username: &str, sender: &str) -> bool {
        let Some(user) = self.users.get(username) else {
            return false;
        };
        let sender = sender.trim();
        let sender = sender
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(sender);
        sender.is_empty()
            || user.allowed_senders.is_empty()
            || user.allowed_senders.iter().any(|p| p.matches(sender))
    }
}

/// A hash that matches no password, with the algorithm and parameters most of `hashes` have (the
/// defaults when there are none), so verifying against it takes as long as verifying a real one.
fn dummy_hash<'a>(hashes: impl Iterator<Item = &'a str>) -> String {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for (order, phc) in hashes.enumerate() {
        if let Some(dummy) = PasswordHash::new(phc).ok().and_then(|h| dummy_like(&h)) {
            counts.entry(dummy).or_insert((0, order)).0 += 1;
        }
    }
    // The most common; among equals the first configured, so the choice does not vary between runs.
    counts
        .into_iter()
        .max_by_key(|(_, (count, order))| (*count, std::cmp::Reverse(*order)))
        .map(|(dummy, _)| dummy)
        .unwrap_or_else(default_dummy)
}

fn dummy_like(template: &PasswordHash<'_>) -> Option<String> {
    let mut dummy = template.clone();
    dummy.salt = Some(Salt::from_b64(DUMMY_SALT).ok()?);
    let len = template
        .hash
        .map_or(Params::DEFAULT_OUTPUT_LEN, |h| h.len());
    dummy.hash = Some(Output::new(&vec![0u8; len]).ok()?);
    Some(dummy.to_string())
}

fn default_dummy() -> String {
    let params = Params::default();
    format!(
        "$argon2id$v=19$m={},t={},p={}${DUMMY_SALT}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        // 32 zero bytes, base64 without padding.
        "A".repeat(43)
    )
}

/// A counting semaphore for blocking threads: at most `limit` verifications at once.
struct Gate {
    busy: Mutex<usize>,
    freed: Condvar,
    limit: usize,
}

struct Permit<'a>(&'a Gate);

impl Gate {
    fn new(limit: usize) -> Gate {
        Gate {
            busy: Mutex::new(0),
            freed: Condvar::new(),
            limit: limit.max(1),
        }
    }

    fn enter(&self) -> Permit<'_> {
        let busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut busy = self
            .freed
            .wait_while(busy, |busy| *busy >= self.limit)
            .unwrap_or_else(PoisonError::into_inner);
        *busy += 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut busy = self.0.busy.lock().unwrap_or_else(PoisonError::into_inner);
        *busy -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters keep the tests fast; production hashes use the defaults.
    fn quick_hash(password: &str, salt: &str) -> String {
        let params = Params::new(64, 1, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes(), &SaltString::from_b64(salt).unwrap())
            .unwrap()
            .to_string()
    }

    fn user(name: &str, password: &str, allowed: &[&str]) -> UserConfig {
        UserConfig {
            name: name.to_string(),
            password_hash: quick_hash(password, "c2FsdHNhbHRzYWx0"),
            allowed_senders: allowed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn passwords_verify_only_for_their_user() {
        let db = UserDb::new(&[
            user("scanner", "pa55 word", &[]),
            user("printer", "other", &[]),
        ]);
        let cases = [
            ("scanner", "pa55 word", true),
            ("scanner", "pa55 word ", false),
            ("scanner", "other", false),
            ("printer", "other", true),
            ("Scanner", "pa55 word", false),
            ("nobody", "pa55 word", false),
            ("", "", false),
            ("scanner", "", false),
        ];
        for (name, password, expected) in cases {
            assert_eq!(db.verify(name, password), expected, "{name:?} {password:?}");
        }
    }

    #[test]
    fn the_default_hash_round_trips() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(check_password_hash(&phc), Ok(()));
        assert_ne!(phc, hash_password("correct horse").unwrap(), "salted");
        let db = UserDb::new(&[UserConfig {
            name: "u".into(),
            password_hash: phc,
            allowed_senders: vec![],
        }]);
        assert!(db.verify("u", "correct horse"));
        assert!(!db.verify("u", "correct horse battery"));
    }

    #[test]
    fn unknown_users_verify_against_a_hash_like_the_others() {
        let db = UserDb::new(&[user("a", "x", &[]), user("b", "y", &[])]);
        let dummy = PasswordHash::new(&db.dummy).unwrap();
        assert_eq!(dummy.to_string(), db.dummy);
        let real = user("a", "x", &[]).password_hash;
        let real = PasswordHash::new(&real).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.hash.unwrap().len(), real.hash.unwrap().len());
        assert_ne!(dummy.salt, real.salt);

        // Without users (or without usable hashes): the defaults `smarthost passwd` uses.
        for db in [
            UserDb::new(&[]),
            UserDb::new(&[UserConfig {
                name: "broken".into(),
                password_hash: "$argon2id$garbage".into(),
                allowed_senders: vec![],
            }]),
        ] {
            assert_eq!(check_password_hash(&db.dummy), Ok(()), "{}", db.dummy);
            assert!(db.dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
            assert!(!db.verify("broken", ""));
        }
    }

    #[test]
    fn the_most_common_parameters_make_the_dummy() {
        let odd = Argon2::new(
            Algorithm::Argon2i,
            argon2::Version::V0x13,
            Params::new(32, 3, 1, None).unwrap(),
        )
        .hash_password(b"z", &SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap())
        .unwrap()
        .to_string();
        let mut users = vec![UserConfig {
            name: "odd".into(),
            password_hash: odd,
            allowed_senders: vec![],
        }];
        users.push(user("a", "x", &[]));
        users.push(user("b", "y", &[]));
        let db = UserDb::new(&users);
        assert!(
            db.dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{}",
            db.dummy
        );
        assert!(db.verify("odd", "z"));
    }

    #[test]
    fn hashes_are_checked() {
        let good = quick_hash("x", "c2FsdHNhbHRzYWx0");
        assert_eq!(check_password_hash(&good), Ok(()));
        let cases = [
            ("", "not a PHC string"),
            ("hunter2", "not a PHC string"),
            (
                "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
                "not a PHC string",
            ),
            (
                "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                "not argon2id",
            ),
            ("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0", "missing"),
            (
                "$argon2id$v=19$m=2097152,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "more than 1 GiB",
            ),
            (
                "$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "invalid argon2 parameters",
            ),
            (
                "$argon2id$v=18$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "version",
            ),
        ];
        for (phc, expected) in cases {
            let error = check_password_hash(phc).unwrap_err();
            assert!(error.contains(expected), "{phc:?}: {error}");
        }
    }

    #[test]
    fn senders_are_checked_against_the_allowed_list() {
        let db = UserDb::new(&[
            user(
                "scanner",
                "x",
                &[
                    "scanner@contoso.com",
                    "*@fabrikam.com",
                    "*@sub.contoso.com.",
                ],
            ),
            user("anyone", "x", &[]),
        ]);
        let cases = [
            ("scanner", "scanner@contoso.com", true),
            ("scanner", "<Scanner@Contoso.COM>", true),
            ("scanner", " scanner@contoso.com ", true),
            ("scanner", "other@contoso.com", false),
            ("scanner", "scanner@contoso.com.evil", false),
            ("scanner", "x@fabrikam.com", true),
            ("scanner", "x@FABRIKAM.com", true),
            ("scanner", "x@eu.fabrikam.com", false),
            ("scanner", "@fabrikam.com", false),
            ("scanner", "fabrikam.com", false),
            ("scanner", "a@sub.contoso.com", true),
            ("scanner", "", true),
            ("scanner", "<>", true),
            ("anyone", "who@ever.example", true),
            ("anyone", "<>", true),
            ("nobody", "who@ever.example", false),
            ("nobody", "<>", false),
            ("Scanner", "scanner@contoso.com", false),
        ];
        for (name, sender, expected) in cases {
            assert_eq!(
                db.may_send_as(name, sender),
                expected,
                "{name:?} {sender:?}"
            );
        }
    }

    #[test]
    fn sender_patterns_parse() {
        let cases = [
            (
                "scanner@contoso.com",
                Ok(SenderPattern::Address("scanner@contoso.com".into())),
            ),
            (
                "Scanner@Contoso.com",
                Ok(SenderPattern::Address("scanner@contoso.com".into())),
            ),
            (
                "*@Contoso.com",
                Ok(SenderPattern::Domain("contoso.com".into())),
            ),
            (
                "*@contoso.com.",
                Ok(SenderPattern::Domain("contoso.com".into())),
            ),
            ("*@", Err("not a domain pattern")),
            ("*@*.contoso.com", Err("not a domain pattern")),
            ("*", Err("not an address")),
            ("scanner", Err("not an address")),
            ("<scanner@contoso.com>", Err("not an address")),
            ("a@b@c", Err("not an address")),
        ];
        for (text, expected) in cases {
            match (SenderPattern::parse(text), expected) {
                (Ok(p), Ok(e)) => assert_eq!(p, e, "{text:?}"),
                (Err(m), Err(e)) => assert!(m.contains(e), "{text:?}: {m}"),
                (got, _) => panic!("{text:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn the_database_is_shareable_and_its_debug_shows_no_hash() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<UserDb>();
        let db = UserDb::new(&[user("scanner", "x", &[])]);
        let shown = format!("{db:?}");
        assert!(
            shown.contains("scanner") && !shown.contains("argon2"),
            "{shown}"
        );
        assert_eq!((db.len(), db.is_empty()), (1, false));
    }

    #[test]
    fn concurrent_verifications_all_finish() {
        let db = std::sync::Arc::new(UserDb::new(&[user("u", "p", &[])]));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let db = db.clone();
                std::thread::spawn(move || db.verify("u", if i % 2 == 0 { "p" } else { "q" }))
            })
            .collect();
        let results: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            results,
            [true, false, true, false, true, false, true, false]
        );
        assert_eq!(*db.gate.busy.lock().unwrap(), 0);
    }
}
