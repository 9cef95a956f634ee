//! The embedded store's file: an append-only log of checksummed records.
//!
//! Layout: the 8-byte magic `TUGLOG01`, then records, each `len: u32 LE | crc32: u32 LE |
//! payload[len]`. A payload is a commit (its revision and operations), or part of a snapshot
//! (a start marker with the revision, then one entry per key) written by compaction.
//!
//! Crash safety: a write is acknowledged only after its record is written and `fdatasync`ed,
//! so an acknowledged write is on disk. A crash can leave only a torn last record, which fails
//! its length or checksum and is cut off at the next open. Compaction writes the snapshot
//! to `<file>.compact`, fsyncs it, renames it over the log and fsyncs the directory: at every
//! instant the path names either the complete old log or the complete new one.

use super::{KeyValue, Operation, Revision, StoreError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC: &[u8; 8] = b"TUGLOG01";
/// Largest record accepted when reading: protects against a corrupt length.
const MAX_RECORD: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Commit {
        revision: Revision,
        operations: Vec<Operation>,
    },
    SnapshotStart {
        revision: Revision,
    },
    SnapshotEntry(KeyValue),
}

const TAG_COMMIT: u8 = 1;
const TAG_SNAPSHOT_START: u8 = 2;
const TAG_SNAPSHOT_ENTRY: u8 = 3;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Record::Commit {
                revision,
                operations,
            } => {
                out.push(TAG_COMMIT);
                out.extend_from_slice(&revision.to_le_bytes());
                out.extend_from_slice(&(operations.len() as u32).to_le_bytes());
                for op in operations {
                    match op {
                        Operation::Put { key, value } => {
                            out.push(OP_PUT);
                            put_bytes(&mut out, key.as_bytes());
                            put_bytes(&mut out, value);
                        }
                        Operation::Delete { key } => {
                            out.push(OP_DELETE);
                            put_bytes(&mut out, key.as_bytes());
                        }
                    }
                }
            }
            Record::SnapshotStart { revision } => {
                out.push(TAG_SNAPSHOT_START);
                out.extend_from_slice(&revision.to_le_bytes());
            }
            Record::SnapshotEntry(kv) => {
                out.push(TAG_SNAPSHOT_ENTRY);
                out.extend_from_slice(&kv.create_revision.to_le_bytes());
                out.extend_from_slice(&kv.mod_revision.to_le_bytes());
                put_bytes(&mut out, kv.key.as_bytes());
                put_bytes(&mut out, &kv.value);
            }
        }
        out
    }

    fn decode(payload: &[u8]) -> Option<Record> {
        let mut r = Reader { bytes: payload };
        let record = match r.u8()? {
            TAG_COMMIT => {
                let revision = r.u64()?;
                let count = r.u32()?;
                let mut operations = Vec::with_capacity(count.min(1024) as usize);
                for _ in 0..count {
                    operations.push(match r.u8()? {
                        OP_PUT => Operation::Put {
                            key: r.string()?,
                            value: r.bytes()?.to_vec(),
                        },
                        OP_DELETE => Operation::Delete { key: r.string()? },
                        _ => return None,
                    });
                }
                Record::Commit {
                    revision,
                    operations,
                }
            }
            TAG_SNAPSHOT_START => Record::SnapshotStart { revision: r.u64()? },
            TAG_SNAPSHOT_ENTRY => {
                let create_revision = r.u64()?;
                let mod_revision = r.u64()?;
                Record::SnapshotEntry(KeyValue {
                    key: r.string()?,
                    value: r.bytes()?.to_vec(),
                    create_revision,
                    mod_revision,
                })
            }
            _ => return None,
        };
        r.bytes.is_empty().then_some(record)
    }

    /// The record framed for the file: length, checksum, payload.
    fn frame(&self) -> Vec<u8> {
        let payload = self.encode();
        let mut out = Vec::with_capacity(payload.len() + 8);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// What [`LogFile::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub records: Vec<Record>,
    /// Bytes of a torn last record that were cut off (never acknowledged).
    pub truncated_bytes: u64,
}

/// The open log, positioned at its end.
pub struct LogFile {
    /// Shared with the embedded store's syncer, which fsyncs outside the store's lock.
    file: Arc<File>,
    path: PathBuf,
    len: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl LogFile {
    /// Open (or create) the log and read every intact record.
    pub fn open(path: &Path) -> Result<(LogFile, Recovery), StoreError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(path)(e)),
        };
        if bytes.len() < MAGIC.len() {
            // New, or a crash while creating: nothing was ever acknowledged in it.
            if !MAGIC.starts_with(&bytes) {
                return Err(StoreError::Corrupt {
                    path: path.into(),
                    reason: "file too short and not a store header".into(),
                });
            }
            let mut file = File::create(path).map_err(io(path))?;
            file.write_all(MAGIC)
                .and_then(|_| file.sync_all())
                .map_err(io(path))?;
            sync_dir(path)?;
            let file = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(io(path))?;
            return Ok((
                LogFile {
                    file: Arc::new(file),
                    path: path.into(),
                    len: MAGIC.len() as u64,
                },
                Recovery::default(),
            ));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(StoreError::Corrupt {
                path: path.into(),
                reason: "wrong magic (expected TUGLOG01)".into(),
            });
        }
        let mut recovery = Recovery::default();
        let mut offset = MAGIC.len();
        while offset < bytes.len() {
            let Some(record) = read_record(&bytes[offset..]) else {
                break;
            };
            recovery.records.push(record.0);
            offset += record.1;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io(path))?;
        if offset < bytes.len() {
            recovery.truncated_bytes = (bytes.len() - offset) as u64;
            file.set_len(offset as u64)
                .and_then(|_| file.sync_all())
                .map_err(io(path))?;
        }
        Ok((
            LogFile {
                file: Arc::new(file),
                path: path.into(),
                len: offset as u64,
            },
            recovery,
        ))
    }

    /// Append records and fsync: when this returns Ok they survive a crash.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.write(records)?;
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Append records without waiting for the disk: they survive a crash once a later
    /// `sync_data` on [`LogFile::handle`] returns (the embedded store's group commit).
    pub fn write(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        for record in records {
            buf.extend_from_slice(&record.frame());
        }
        (&*self.file).write_all(&buf).map_err(io(&self.path))?;
        self.len += buf.len() as u64;
        Ok(())
    }

    /// The open file, to fsync what was written (a compaction replaces it).
    pub fn handle(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }

    /// Replace the whole log with `records` (a snapshot), atomically.
    pub fn rewrite(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("compact");
        let mut buf = MAGIC.to_vec();
        for record in records {
            buf.extend_from_slice(&record.frame());
        }
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&buf)
            .and_then(|_| file.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        sync_dir(&self.path)?;
        self.file = Arc::new(
            OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map_err(io(&self.path))?,
        );
        self.len = buf.len() as u64;
        Ok(())
    }
}

/// One record at the start of `bytes` and its framed size, or None if torn or corrupt.
fn read_record(bytes: &[u8]) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(8..8 + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((Record::decode(payload)?, 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(revision: u64, key: &str) -> Record {
        Record::Commit {
            revision,
            operations: vec![Operation::Put {
                key: key.into(),
                value: b"v".to_vec(),
            }],
        }
    }

    #[test]
    fn records_round_trip_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let (mut log, recovery) = LogFile::open(&path).unwrap();
        assert!(recovery.records.is_empty());
        log.append(&[commit(1, "/a"), commit(2, "/b")]).unwrap();
        let good_len = log.len();
        drop(log);
        // A torn write: half a record at the end.
        let mut bytes = std::fs::read(&path).unwrap();
        let torn = commit(3, "/c").frame();
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();
        let (log, recovery) = LogFile::open(&path).unwrap();
        assert_eq!(recovery.records, vec![commit(1, "/a"), commit(2, "/b")]);
        assert_eq!(recovery.truncated_bytes, (torn.len() / 2) as u64);
        assert_eq!(log.len(), good_len);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let (mut log, _) = LogFile::open(&path).unwrap();
        log.append(&[commit(1, "/a"), commit(2, "/b")]).unwrap();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (_, recovery) = LogFile::open(&path).unwrap();
        assert_eq!(recovery.records, vec![commit(1, "/a")]);
    }

    #[test]
    fn wrong_magic_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(
            LogFile::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
