//! A JSON-lines journal in the data dir, shared by the instances that mount the volume: one
//! event a line, appended in one write and fsynced before the answer, under a lock (flock)
//! that every writer takes (readers take none: only whole lines are read). Each instance
//! keeps what it folded in memory and reads only what was appended since it last looked
//! (by itself or by another instance during a rolling update): a request never rereads the
//! whole file.
//!
//! A torn last line (a crash mid-write) is skipped, and the next append starts on a line of
//! its own, so the torn bytes never swallow a good event.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a journal's events fold into.
pub trait Fold: Default + Send {
    type Event: Serialize + DeserializeOwned;
    fn apply(&mut self, event: Self::Event);
}

struct Folded<S> {
    state: S,
    /// Bytes of the file read so far (up to the end of the last whole line).
    offset: u64,
    /// Whether the file has bytes after the last newline (a torn line).
    torn: bool,
}

pub struct Journal<S: Fold> {
    file: PathBuf,
    folded: Mutex<Folded<S>>,
}

impl<S: Fold> Journal<S> {
    /// Opens `name` under `data` and folds what it holds.
    pub fn open(data: &Path, name: &str) -> std::io::Result<Journal<S>> {
        std::fs::create_dir_all(data)?;
        let journal = Journal {
            file: data.join(name),
            folded: Mutex::new(Folded {
                state: S::default(),
                offset: 0,
                torn: false,
            }),
        };
        journal.read(|_| ())?;
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    fn open_file(&self) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.file)
    }

    fn folded(&self) -> std::sync::MutexGuard<'_, Folded<S>> {
        self.folded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `f` on the state, current with every instance's appends. Readers take no lock
    /// between instances: only whole lines are read, and a line is written in one write.
    ///
    /// A read never creates the file: a service that only reads leaves its volume as it
    /// found it (a catalog started on a volume wrote an empty journal into it).
    pub fn read<T>(&self, f: impl FnOnce(&S) -> T) -> std::io::Result<T> {
        let mut folded = self.folded();
        match std::fs::File::open(&self.file) {
            Ok(mut file) => catch_up(&mut file, &mut folded)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Nothing written yet, or removed (a volume restored without it).
                folded.state = S::default();
                folded.offset = 0;
                folded.torn = false;
            }
            Err(e) => return Err(e),
        }
        Ok(f(&folded.state))
    }

    /// Runs `f` with the journal's lock held (flock, which every instance and thread
    /// takes to write): what `f` reads stays true until it appends. Readers are not held up.
    pub fn locked<T>(&self, f: impl FnOnce(&Writer<'_, S>) -> T) -> std::io::Result<T> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file.with_extension("lock"))?;
        // SAFETY: flock on an fd we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f(&Writer { journal: self }))
    }
}

/// Reads the lines appended since `folded.offset` and applies them.
fn catch_up<S: Fold>(file: &mut std::fs::File, folded: &mut Folded<S>) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len < folded.offset {
        // Replaced by a shorter file (restored from a snapshot): fold it again.
        folded.state = S::default();
        folded.offset = 0;
    }
    if len == folded.offset {
        folded.torn = false;
        return Ok(());
    }
    file.seek(SeekFrom::Start(folded.offset))?;
    let mut new = Vec::with_capacity((len - folded.offset) as usize);
    file.take(len - folded.offset).read_to_end(&mut new)?;
    let whole = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for line in new[..whole].split(|b| *b == b'\n') {
        if let Ok(event) = serde_json::from_slice::<S::Event>(line) {
            folded.state.apply(event);
        }
    }
    folded.offset += whole as u64;
    folded.torn = whole < new.len();
    Ok(())
}

/// The journal with its lock held: reads, and appends.
pub struct Writer<'a, S: Fold> {
    journal: &'a Journal<S>,
}

impl<S: Fold> Writer<'_, S> {
    pub fn read<T>(&self, f: impl FnOnce(&S) -> T) -> std::io::Result<T> {
        self.journal.read(f)
    }

    /// Writes `event` (one write, then fsync) and applies it.
    pub fn append(&self, event: S::Event) -> std::io::Result<()> {
        let mut folded = self.journal.folded();
        let mut file = self.journal.open_file()?;
        // With the lock held, bytes after the last whole line are a crashed writer's.
        catch_up(&mut file, &mut folded)?;
        let mut line = Vec::new();
        if folded.torn {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, &event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_all()?;
        // Past the torn bytes too: they end with the newline written first.
        folded.offset = file.metadata()?.len();
        folded.torn = false;
        folded.state.apply(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sum(Vec<u32>);

    impl Fold for Sum {
        type Event = u32;
        fn apply(&mut self, event: u32) {
            self.0.push(event);
        }
    }

    #[test]
    fn two_instances_see_each_others_appends_and_a_torn_line_swallows_nothing() {
        let dir = tempfile_dir();
        let a: Journal<Sum> = Journal::open(&dir, "j.jsonl").unwrap();
        let b: Journal<Sum> = Journal::open(&dir, "j.jsonl").unwrap();
        a.locked(|j| j.append(1)).unwrap().unwrap();
        b.locked(|j| j.append(2)).unwrap().unwrap();
        assert_eq!(a.read(|s| s.0.clone()).unwrap(), [1, 2]);
        // A crash mid-write leaves a torn line; the next event is still read back.
        std::fs::OpenOptions::new()
            .append(true)
            .open(a.path())
            .unwrap()
            .write_all(b"[4")
            .unwrap();
        assert_eq!(b.read(|s| s.0.clone()).unwrap(), [1, 2]);
        b.locked(|j| j.append(3)).unwrap().unwrap();
        assert_eq!(a.read(|s| s.0.clone()).unwrap(), [1, 2, 3]);
        let again: Journal<Sum> = Journal::open(&dir, "j.jsonl").unwrap();
        assert_eq!(again.read(|s| s.0.clone()).unwrap(), [1, 2, 3]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reading_leaves_the_volume_as_it_was_until_the_first_append() {
        let dir = tempfile_dir();
        let j: Journal<Sum> = Journal::open(&dir, "j.jsonl").unwrap();
        assert!(j.read(|s| s.0.is_empty()).unwrap());
        assert!(!j.path().exists(), "a read created {}", j.path().display());
        j.locked(|w| w.append(7)).unwrap().unwrap();
        assert_eq!(j.read(|s| s.0.clone()).unwrap(), [7]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!("shop-journal-{}", crate::model::random_id()))
    }
}
