//! The content store: blobs by digest under `blobs/<algorithm>/<hex>`.
//!
//! A blob is written to a temp file under `tmp/`, hashed as it is written, checked against
//! the digest (and size) it was announced with, synced, and only then renamed to its final
//! name. A blob under `blobs/` is therefore always complete and verified; an interrupted
//! write leaves only a temp file, which the next garbage collection deletes. Two writers of
//! the same blob serialise on a per-digest `flock`, so the second one finds it present.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::lock::{self, LockGuard};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The largest JSON document (manifest, index, config) read into memory.
pub const MAX_DOCUMENT: u64 = 8 * 1024 * 1024;

/// Blobs by digest, verified on write.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

/// A unique temp path under `dir`.
pub(crate) fn temp_path(dir: &Path, what: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{what}.{}.{n}", std::process::id()))
}

impl ContentStore {
    /// Open (creating) the store rooted at `root` (the image store's directory).
    pub fn open(root: &Path) -> Result<ContentStore> {
        for d in ["blobs/sha256", "blobs/sha512", "tmp", "locks"] {
            let p = root.join(d);
            fs::create_dir_all(&p).at(&p)?;
        }
        Ok(ContentStore {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn has(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.path(digest))
            .map(|m| m.is_file())
            .unwrap_or(false)
    }

    /// Size of a present blob.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Hold the per-digest lock, so one writer fetches a blob while others wait for it.
    pub fn lock_digest(&self, kind: &str, digest: &Digest) -> Result<LockGuard> {
        lock::exclusive(&self.root.join("locks").join(format!(
            "{kind}-{}-{}",
            digest.algorithm().as_str(),
            digest.hex()
        )))
    }

    /// A writer for a blob whose digest is known in advance.
    pub fn writer(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter> {
        BlobWriter::new(self, Some((expected.clone(), size)), expected.algorithm())
    }

    /// A writer that only checks the bytes against `expected` and keeps nothing: for
    /// layer blobs of a store that does not keep them once unpacked.
    pub fn verifier(&self, expected: &Digest, size: Option<u64>) -> BlobWriter {
        BlobWriter {
            store: self.clone(),
            expected: Some((expected.clone(), size)),
            inner: Some(HashingWriter::new(Target::Discard, expected.algorithm())),
            tmp: PathBuf::new(),
        }
    }

    /// A writer for a blob whose digest is computed from its content (sha256).
    pub fn writer_unverified(&self) -> Result<BlobWriter> {
        BlobWriter::new(self, None, Algorithm::Sha256)
    }

    /// Copy `reader` into the store as `expected`, unless it is already there.
    pub fn put_verified<R: Read>(
        &self,
        expected: &Digest,
        size: Option<u64>,
        mut reader: R,
    ) -> Result<()> {
        if self.has(expected) {
            return Ok(());
        }
        let _lock = self.lock_digest("blob", expected)?;
        if self.has(expected) {
            return Ok(());
        }
        let mut w = self.writer(expected, size)?;
        let tmp = w.tmp.clone();
        io::copy(&mut reader, &mut w).at(&tmp)?;
        w.commit()?;
        Ok(())
    }

    /// Store `data`, returning its sha256 digest.
    pub fn put_bytes(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256_of(data);
        self.put_verified(&digest, Some(data.len() as u64), data)?;
        Ok(digest)
    }

    /// Open a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        File::open(self.path(digest)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::BlobMissing {
                    digest: digest.to_string(),
                }
            } else {
                Error::io(self.path(digest), e)
            }
        })
    }

    /// Read a small blob (a JSON document), checking its digest again: a blob changed on
    /// disk is never trusted.
    pub fn read_document(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_blob(digest)?
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut data)
            .at(self.path(digest))?;
        if data.len() as u64 > MAX_DOCUMENT {
            return Err(Error::InvalidDocument {
                what: "document",
                name: digest.to_string(),
                reason: format!("larger than {MAX_DOCUMENT} bytes"),
            });
        }
        let mut h = crate::digest::Hasher::new(digest.algorithm());
        h.update(&data);
        let actual = h.finish();
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("stored blob {}", self.path(digest).display()),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(data)
    }

    /// Every blob in the store.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in ["sha256", "sha512"] {
            let dir = self.root.join("blobs").join(alg);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(dir, e)),
            };
            for ent in rd {
                let ent = ent.at(&dir)?;
                if let Ok(d) = format!("{alg}:{}", ent.file_name().to_string_lossy()).parse() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Delete a blob (the caller holds the store's exclusive lock).
    pub fn remove(&self, digest: &Digest) -> Result<u64> {
        let p = self.path(digest);
        let size = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&p) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io(p, e)),
        }
    }
}

/// Where a [`BlobWriter`]'s bytes go.
enum Target {
    File(io::BufWriter<File>),
    /// Hashed and counted only ([`ContentStore::verifier`]).
    Discard,
}

impl Write for Target {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Target::File(f) => f.write(buf),
            Target::Discard => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Target::File(f) => f.flush(),
            Target::Discard => Ok(()),
        }
    }
}

/// A blob being written. Nothing is visible under `blobs/` until [`BlobWriter::commit`]
/// has verified it; dropping it uncommitted deletes the temp file.
pub struct BlobWriter {
    store: ContentStore,
    expected: Option<(Digest, Option<u64>)>,
    inner: Option<HashingWriter<Target>>,
    tmp: PathBuf,
}

impl BlobWriter {
    fn new(
        store: &ContentStore,
        expected: Option<(Digest, Option<u64>)>,
        algorithm: Algorithm,
    ) -> Result<Self> {
        let tmp = temp_path(&store.tmp_dir(), "blob");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at(&tmp)?;
        Ok(BlobWriter {
            store: store.clone(),
            expected,
            inner: Some(HashingWriter::new(
                Target::File(io::BufWriter::with_capacity(256 * 1024, file)),
                algorithm,
            )),
            tmp,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.inner.as_ref().map(|w| w.count()).unwrap_or(0)
    }

    /// Verify, sync and move the blob into place (a verifier only verifies). Returns its
    /// digest and size.
    pub fn commit(mut self) -> Result<(Digest, u64)> {
        let inner = self.inner.take().expect("commit once");
        let (target, actual, size) = inner.finish();
        if let Some((expected, want_size)) = &self.expected {
            if let Some(want) = want_size {
                if *want != size {
                    return Err(Error::SizeMismatch {
                        digest: expected.to_string(),
                        expected: *want,
                        actual: size,
                    });
                }
            }
            if &actual != expected {
                return Err(Error::DigestMismatch {
                    what: format!("blob {expected}"),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        let file = match target {
            Target::File(buf) => buf
                .into_inner()
                .map_err(|e| Error::io(&self.tmp, e.into_error()))?,
            Target::Discard => return Ok((actual, size)),
        };
        file.sync_all().at(&self.tmp)?;
        drop(file);
        let dest = self.store.path(&actual);
        fs::rename(&self.tmp, &dest).at(&dest)?;
        Ok((actual, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.as_mut().expect("not committed").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.as_mut().expect("not committed").flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Uncommitted or failed commit: the temp file goes (a no-op after the rename).
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_write_and_mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let good = Digest::sha256_of(b"hello");
        store.put_verified(&good, Some(5), &b"hello"[..]).unwrap();
        assert!(store.has(&good));
        assert_eq!(store.read_document(&good).unwrap(), b"hello");

        let claimed = Digest::sha256_of(b"other");
        let err = store
            .put_verified(&claimed, None, &b"tampered"[..])
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!store.has(&claimed));
        let err = store
            .put_verified(&claimed, Some(3), &b"other"[..])
            .unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        assert!(!store.has(&claimed));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        assert_eq!(store.list().unwrap(), vec![good]);
    }

    #[test]
    fn interrupted_write_is_not_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"abc");
        let mut w = store.writer(&d, Some(3)).unwrap();
        w.write_all(b"ab").unwrap();
        assert!(!store.has(&d));
        drop(w);
        assert!(!store.has(&d));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn changed_blob_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"{}").unwrap();
        fs::write(store.path(&d), b"{\"x\":1}").unwrap();
        assert!(matches!(
            store.read_document(&d),
            Err(Error::DigestMismatch { .. })
        ));
    }
}
