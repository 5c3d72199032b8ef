//! `smarthost passwd` with the password on stdin (as scripts use it): what it prints is a hash that
//! `UserDb` accepts for that password and no other.

use smarthost::config::UserConfig;
use smarthost::policy::users::UserDb;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn passwd(stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn db(hash: &str) -> UserDb {
    UserDb::new(&[UserConfig {
        name: "scanner".to_string(),
        password_hash: hash.to_string(),
        allowed_senders: Vec::new(),
    }])
}

#[test]
fn passwd_prints_a_hash_that_verifies() {
    let out = passwd(b"pa55 w\xc3\xb6rd\r\n");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let hash = stdout.strip_suffix('\n').unwrap();
    assert!(!hash.contains('\n'), "one line: {stdout:?}");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let db = db(hash);
    assert!(db.verify("scanner", "pa55 wörd"));
    for wrong in ["pa55 wörd\r", "pa55 word", "pa55 wörd ", ""] {
        assert!(!db.verify("scanner", wrong), "{wrong:?}");
    }
    assert!(!db.verify("other", "pa55 wörd"));

    // The salt is random: the same password hashes differently every time.
    let again = passwd(b"pa55 w\xc3\xb6rd\n");
    let again = String::from_utf8(again.stdout).unwrap();
    assert_ne!(again, stdout);
    assert!(self::db(again.trim_end()).verify("scanner", "pa55 wörd"));
}

#[test]
fn passwd_without_a_password_prints_nothing_and_fails() {
    for input in [&b""[..], b"\n", b"\xff\n"] {
        let out = passwd(input);
        assert_eq!(out.status.code(), Some(1), "{input:?}: {out:?}");
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("smarthost: "), "{stderr}");
    }
}
