//! `[[user]]` (inbound AUTH accounts) and `[auth_lockout]`.

use super::*;
use crate::config::{AuthLockout, UserConfig};

/// `smarthost passwd` of "pa55 word".
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$l+etGo80Cvt5lMmoFHAD5g$1jrlblb3H17sE7BNMtCyXcYPPQthQNdRHHwTu7824nc";

fn user(name: &str) -> String {
    format!("[[user]]\nname = \"{name}\"\npassword_hash = \"{HASH}\"\n")
}

#[test]
fn users_and_the_lockout_load() {
    let text = format!(
        "{}allowed_senders = [\"Scanner@Contoso.com\", \"*@Fabrikam.com.\"]\n{}\
         [auth_lockout]\nmax_failures = 3\nwindow = \"5m\"\nduration = \"1h\"\n{BASE}",
        user("scanner"),
        user("app"),
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.users,
        [
            UserConfig {
                name: "scanner".into(),
                password_hash: HASH.into(),
                allowed_senders: vec!["scanner@contoso.com".into(), "*@fabrikam.com".into()],
            },
            UserConfig {
                name: "app".into(),
                password_hash: HASH.into(),
                allowed_senders: vec![],
            },
        ]
    );
    assert_eq!(
        config.auth_lockout,
        AuthLockout {
            max_failures: 3,
            window: Duration::from_secs(300),
            duration: Duration::from_secs(3600),
        }
    );
    let db = crate::policy::users::UserDb::new(&config.users);
    assert!(db.verify("scanner", "pa55 word"));
    assert!(db.may_send_as("scanner", "x@fabrikam.com"));
    assert!(!db.may_send_as("scanner", "x@contoso.com"));

    let defaults = load(BASE).unwrap();
    assert!(defaults.users.is_empty());
    assert_eq!(defaults.auth_lockout, AuthLockout::default());
    let off = load(&format!("[auth_lockout]\nmax_failures = 0\n{BASE}")).unwrap();
    assert_eq!(off.auth_lockout.max_failures, 0);
}

#[test]
fn each_user_mistake_is_reported_with_its_line() {
    let u = user("scanner");
    let cases: Vec<(String, usize, &str)> = vec![
        (format!("{u}password = \"pa55 word\""), 4, "unknown key `password` in [[user]] (plain passwords are not stored; put the output of `smarthost passwd` in password_hash)"),
        (format!("{u}password_env = \"X\""), 4, "plain passwords are not stored"),
        (format!("{u}allowed_sender = []"), 4, "unknown key `allowed_sender` in [[user]] (did you mean `allowed_senders`?)"),
        ("[[user]]\nname = \"scanner\"\npassword_hash = \"pa55 word\"".into(), 3, "`user.password_hash` is not a usable argon2 hash: not a PHC string"),
        ("[[user]]\nname = \"scanner\"\npassword_hash = \"$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\"".into(), 3, "run `smarthost passwd` and put the line it prints here"),
        ("[[user]]\nname = \"scanner\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$l+etGo80Cvt5lMmoFHAD5g\"".into(), 3, "the salt or the hash itself is missing"),
        ("[[user]]\nname = \"scanner\"\npassword_hash = \"$scrypt$ln=16,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"".into(), 3, "the algorithm is \"scrypt\""),
        ("[[user]]\nname = \"scanner\"\npassword_hash = \"\"".into(), 3, "`user.password_hash` is empty"),
        ("[[user]]\nname = \"scanner\"".into(), 1, "[[user]] needs `password_hash`"),
        (format!("[[user]]\npassword_hash = \"{HASH}\""), 1, "[[user]] needs `name`"),
        (format!("[[user]]\nname = \"\"\npassword_hash = \"{HASH}\""), 2, "`user.name` is empty"),
        (format!("[[user]]\nname = \" scanner\"\npassword_hash = \"{HASH}\""), 2, "`user.name` \" scanner\" starts or ends with a space"),
        (format!("[[user]]\nname = \"a\\u0000b\"\npassword_hash = \"{HASH}\""), 2, "contains a control character"),
        (format!("[[user]]\nname = \"{}\"\npassword_hash = \"{HASH}\"", "x".repeat(257)), 2, "is longer than 256 bytes"),
        (format!("[[user]]\nname = 5\npassword_hash = \"{HASH}\""), 2, "`user.name` must be a string, found integer"),
        (format!("{u}{u}"), 5, "user \"scanner\" is already defined on line 2"),
        (format!("{u}{}", user("Scanner")), 5, "user \"Scanner\" differs from \"scanner\" (line 2) only in case"),
        (format!("{u}allowed_senders = []"), 4, "`user.allowed_senders` is empty: leave it out to let the user send as anyone"),
        (format!("{u}allowed_senders = \"a@b.example\""), 4, "`user.allowed_senders` must be an array of strings"),
        (format!("{u}allowed_senders = [\"ok@b.example\",\n  \"scanner\"]"), 5, "`user.allowed_senders`: \"scanner\" is not an address"),
        (format!("{u}allowed_senders = [\"<>\"]"), 4, "(the null sender <> is always allowed)"),
        (format!("{u}allowed_senders = [\"*\"]"), 4, "(leave allowed_senders out to allow any sender)"),
        (format!("{u}allowed_senders = [\"*@*.contoso.com\"]"), 4, "\"*@*.contoso.com\" is not a domain pattern: write \"*@contoso.com\""),
        (format!("[user]\nname = \"scanner\"\npassword_hash = \"{HASH}\""), 1, "write [[user]] with double brackets"),
        ("user = \"scanner\"".into(), 1, "`user` must be tables, [[user]], found string"),
        // The lockout.
        ("[auth_lockout]\nmax_failure = 5".into(), 2, "unknown key `max_failure` in [auth_lockout] (did you mean `max_failures`?)"),
        ("[auth_lockout]\nmax_failures = -1".into(), 2, "`auth_lockout.max_failures` must be between 0 (never lock) and 4294967295"),
        ("[auth_lockout]\nmax_failures = \"5\"".into(), 2, "`auth_lockout.max_failures` must be an integer, found string"),
        ("[auth_lockout]\nwindow = \"0s\"".into(), 2, "`auth_lockout.window` must be longer than zero"),
        ("[auth_lockout]\nduration = \"forever\"".into(), 2, "`auth_lockout.duration`: invalid duration \"forever\""),
        ("[[auth_lockout]]\nmax_failures = 5".into(), 1, "`auth_lockout` must be a table, [auth_lockout], found array"),
        ("max_failures = 5".into(), 1, "unknown key `max_failures` at the top level (it belongs in [auth_lockout])"),
    ];
    for (snippet, line, fragment) in &cases {
        let text = format!("{snippet}\n{BASE}");
        let got = errors(&text);
        assert!(
            got.len() == 1 && got[0].line == Some(*line) && got[0].message.contains(fragment),
            "for:\n{snippet}\nexpected line {line}: {fragment}\ngot: {got:#?}"
        );
    }
}

#[test]
fn every_user_error_is_reported_at_once() {
    let text = format!(
        "{}password = \"x\"\n[[user]]\nname = \"b\"\npassword_hash = \"nope\"\n\
         allowed_senders = [\"nope\"]\n{BASE}",
        user("a")
    );
    let lines: Vec<Option<usize>> = errors(&text).iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(4), Some(7), Some(8)]);
}

#[test]
fn the_password_hash_is_not_repeated_in_errors() {
    let secretish = "$argon2id$v=19$m=19456,t=2,p=1$bm90LXNlY3JldA$";
    let text = format!("[[user]]\nname = \"a\"\npassword_hash = \"{secretish}\"\n{BASE}");
    let e = errors(&text);
    assert!(!e[0].message.contains("bm90LXNlY3JldA"), "{e:?}");
}
