//! The refresh token of a delegated sign-in (`smarthost oauth login`), kept in the route's
//! `token_file` as JSON: `{"refresh_token": "...", "obtained_at": 1767225600, "account": "x@y"}`.
//!
//! Invariants: the file is only ever replaced whole (temporary file with mode 0600 in the same
//! directory, fsync, rename, fsync of the directory), so a crash leaves the old token or the new one,
//! never half of one; the token never appears in `Debug` output or in errors.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Write};
use std::path::Path;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub refresh_token: String,
    /// Unix seconds when this refresh token was issued.
    pub obtained_at: u64,
    /// The signed-in account (UPN), when the token told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("refresh_token", &format_args!("<redacted>"))
            .field("obtained_at", &self.obtained_at)
            .field("account", &self.account)
            .finish()
    }
}

/// Reads the token file; `Ok(None)` when it does not exist (nobody signed in yet).
pub fn read(path: &Path) -> io::Result<Option<StoredToken>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    warn_if_readable_by_others(path);
    let stored: StoredToken = serde_json::from_slice(&text).map_err(|e| {
        // Only the position: serde's message may quote a value.
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not a smarthost token file (JSON error at line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if stored.refresh_token.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the token file holds no refresh token",
        ));
    }
    Ok(Some(stored))
}

/// Replaces the token file atomically; the new file has mode 0600. Creates a missing parent
/// directory (mode 0700).
pub fn write(path: &Path, token: &StoredToken) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        let mut json = serde_json::to_vec_pretty(token).map_err(io::Error::other)?;
        json.push(b'\n');
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "the OAuth token file can be read by other users: chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tokens_read_back_with_mode_0600_and_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/route.json");
        assert_eq!(read(&path).unwrap(), None);
        let token = StoredToken {
            refresh_token: "0.AAAA-refresh-secret".into(),
            obtained_at: 1_700_000_000,
            account: Some("scanner@contoso.example".into()),
        };
        write(&path, &token).unwrap();
        assert_eq!(read(&path).unwrap(), Some(token.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let rotated = StoredToken {
            refresh_token: "0.BBBB-rotated".into(),
            ..token.clone()
        };
        write(&path, &rotated).unwrap();
        assert_eq!(read(&path).unwrap(), Some(rotated));
        assert!(!format!("{token:?}").contains("refresh-secret"));
        // No temporary files left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_that_does_not_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(
            &path,
            "{\"refresh_token\": \"s3cret\", \"obtained_at\": \"x\"}",
        )
        .unwrap();
        let err = read(&path).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
