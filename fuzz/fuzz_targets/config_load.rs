//! The configuration loader (`config::load_str`): TOML text → validated `Config`. Invariants: never
//! panics whatever the text; an error result names at least one error, each with a message and,
//! when it has a line, a line inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::config::load_str;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    // `password_file = "/dev/zero"` would read forever: the loader trusts the administrator's
    // paths, so keep the fuzzer away from device and kernel files.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    match load_str(text, "fuzz.toml") {
        Ok(config) => {
            drop(config);
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "an error result without errors");
            let lines = text.lines().count().max(1) + 1;
            for error in &errors.errors {
                assert!(!error.message.is_empty(), "an empty error message");
                if let Some(line) = error.line {
                    assert!(
                        (1..=lines).contains(&line),
                        "line {line} outside the file ({lines} lines)"
                    );
                }
            }
            let _ = errors.to_string();
        }
    }
});
