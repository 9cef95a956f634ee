//! tugboat-api: what the orchestrator's programs share. The spec-file format and its
//! validation ([`spec`]), the objects of the cluster ([`model`]), the bodies of the HTTP
//! API ([`wire`]), the exec stream's framing and HTTP upgrade ([`execstream`]), and the typed
//! client of the server's API ([`client`]). The server and the agent depend on this crate
//! and never on each other.

pub mod client;
pub mod execstream;
pub mod model;
pub mod spec;
pub mod tls;
pub mod wire;

/// Writes `bytes` to `path` so that a crash or power cut leaves the old file or the new one
/// whole, never a part: a temporary sibling made with `mode` (0o600 for keys and tokens),
/// written and fsynced, renamed over `path`, then the directory fsynced. Missing parent
/// directories are made. The one such write of the server's and the API's files (token,
/// TLS keys, the secrets key, bootstrap data).
pub fn write_durable(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = dir {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether a secret someone sent is the one expected, in time that does not depend on where
/// they differ (subtle's ConstantTimeEq; only the lengths may leak). The one check of bearer
/// tokens for the server and the agent.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(expected).into()
}

#[cfg(test)]
mod durable_tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_durable_write_replaces_the_file_whole_with_its_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secret.key");
        super::write_durable(&path, b"one", 0o600).unwrap();
        super::write_durable(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret.key")]);
        // A path under a file cannot be made: the error says so, nothing is left.
        let bad = path.join("under-a-file");
        assert!(super::write_durable(&bad, b"x", 0o600).is_err());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_same_secret_is_the_same() {
        assert!(super::same_secret(b"s3cret", b"s3cret"));
        assert!(!super::same_secret(b"s3cres", b"s3cret"));
        assert!(!super::same_secret(b"s3cre", b"s3cret"));
        assert!(!super::same_secret(b"", b"s3cret"));
    }
}
