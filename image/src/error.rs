//! The crate's one error type. Every variant names what it is about: the reference, the
//! digest, the file or the tar entry path, so a person can act on the message.

use std::io;
use std::path::PathBuf;

/// An error from the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference that does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// No local image has this reference.
    #[error("image {reference:?} not found in the local store")]
    NotFound { reference: String },

    /// A digest string that is not `algorithm:hex` with a supported algorithm.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },

    /// Content did not hash to the digest it was announced with; nothing was stored.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// Content was not the size its descriptor announced; nothing was stored.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },

    /// A blob the store should have is missing.
    #[error("blob {digest} is missing from the content store")]
    BlobMissing { digest: String },

    /// A tar entry that was refused or could not be applied. `layer` names the tarball:
    /// `layer sha256:...` for a layer blob, `archive PATH` for an imported archive.
    #[error("{layer}: tar entry {entry:?}: {reason}")]
    TarEntry {
        layer: String,
        entry: String,
        reason: String,
    },

    /// A tarball that is not a readable tar stream (truncated, corrupt, bad compression).
    #[error("{layer}: bad tar stream: {source}")]
    TarStream {
        layer: String,
        #[source]
        source: io::Error,
    },

    /// An OCI or Docker document (manifest, index, config, layout) that is not valid.
    #[error("invalid {what} {name}: {reason}")]
    InvalidDocument {
        what: &'static str,
        name: String,
        reason: String,
    },

    /// An image index with no manifest for the wanted platform.
    #[error("image {reference:?} has no manifest for platform {platform} (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },

    /// A media type the store does not handle.
    #[error("{digest}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { digest: String, media_type: String },

    /// The registry refused or failed a request.
    #[error("registry error for {reference:?}: {reason}")]
    Registry { reference: String, reason: String },

    /// Credentials file that could not be read or parsed.
    #[error("auth file {path}: {reason}")]
    AuthFile { path: PathBuf, reason: String },

    /// Mounting or unmounting an instance rootfs failed.
    #[error("rootfs {path}: {op} failed: {source}")]
    Mount {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: nix::Error,
    },

    /// The overlay mount options do not fit the kernel's limit.
    #[error("rootfs {path}: too many layers for one overlay mount ({len} bytes of options, limit {limit})")]
    TooManyLayers {
        path: PathBuf,
        len: usize,
        limit: usize,
    },

    /// An instance id that cannot be used as a directory name.
    #[error("invalid instance id {id:?}: {reason}")]
    InvalidInstanceId { id: String, reason: String },

    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
