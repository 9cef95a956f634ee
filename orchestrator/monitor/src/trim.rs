//! Gives back what creating the container touched once and will not touch again.
//!
//! Creating and starting a container runs most of tug-runtime (the OCI config's parser,
//! cgroups, mounts, seccomp): some 1.5 MB of code and read-only data of this binary and of
//! libc are then resident in the monitor, although from then on it only polls, copies and
//! waits. Those pages are clean copies of files (the page cache keeps them, shared with
//! every other monitor); dropping this process's mappings of them (`MADV_DONTNEED`) costs
//! nothing but a page fault for each page the monitor touches again. Only mappings that
//! hold no private copy of a page (smaps' `Anonymous: 0 kB`, not writable) are dropped: the
//! contents of a dropped page come back from its file unchanged (the kernel drops such pages
//! itself under memory pressure; this only does it early). The heap's free pages go back too
//! (`malloc_trim`, glibc).

use std::io;

/// A mapping whose pages can be dropped and read back from its file unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanMapping {
    pub start: usize,
    pub end: usize,
    pub rss_kb: u64,
}

/// The clean file mappings in `/proc/PID/smaps` text: file-backed (an inode), private,
/// not writable, with no private (anonymous) page.
pub fn clean_file_mappings(smaps: &str) -> Vec<CleanMapping> {
    let mut out = Vec::new();
    let mut current: Option<(CleanMapping, bool)> = None;
    let flush = |m: Option<(CleanMapping, bool)>, out: &mut Vec<CleanMapping>| {
        if let Some((m, true)) = m {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-').and_then(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        }) {
            flush(current.take(), &mut out);
            let perms = words.next().unwrap_or_default().as_bytes();
            let inode = words.nth(2).unwrap_or("0");
            let candidate =
                perms.len() == 4 && perms[1] == b'-' && perms[3] == b'p' && inode != "0";
            current = Some((
                CleanMapping {
                    start,
                    end,
                    rss_kb: 0,
                },
                candidate,
            ));
            continue;
        }
        let Some((m, candidate)) = current.as_mut() else {
            continue;
        };
        let kb = || words.clone().next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => m.rss_kb = kb().unwrap_or(0),
            "Anonymous:" if kb() != Some(0) => *candidate = false,
            "VmFlags:" if line.contains(" lo") => *candidate = false,
            _ => {}
        }
    }
    flush(current, &mut out);
    out.retain(|m| m.rss_kb > 0);
    out
}

/// Drops this process's resident clean file pages and trims the heap; returns the kB
/// dropped.
pub fn release_startup_memory() -> io::Result<u64> {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut dropped = 0;
    for m in clean_file_mappings(&smaps) {
        // SAFETY: the range is a whole private, read-only file mapping with no private
        // page: after MADV_DONTNEED each page reads back from the file as it was.
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            dropped += m.rss_kb;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:01 1234 /usr/bin/tugboat-monitor
Rss:                 236 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55d0a0100000-55d0a0300000 r-xp 00100000 fe:01 1234 /usr/bin/tugboat-monitor
Rss:                1460 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw sd
55d0a0300000-55d0a0330000 r--p 00300000 fe:01 1234 /usr/bin/tugboat-monitor
Rss:                 168 kB
Anonymous:           168 kB
VmFlags: rd mr mw me dw ac sd
55d0a0330000-55d0a0332000 rw-p 00330000 fe:01 1234 /usr/bin/tugboat-monitor
Rss:                   8 kB
Anonymous:             8 kB
VmFlags: rd wr mr mw me dw ac sd
55d0a1000000-55d0a1020000 rw-p 00000000 00:00 0 [heap]
Rss:                 104 kB
Anonymous:           104 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000100000 r-xp 00028000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 692 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo sd
7f0000200000-7f0000201000 r--p 00000000 fe:01 77 /usr/share/locale/empty
Rss:                   0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me de sd
";

    #[test]
    fn only_clean_read_only_file_pages_are_dropped() {
        let got = clean_file_mappings(SMAPS);
        // The binary's headers and rodata, and its code: clean copies of the file. Not
        // relro (relocated: private pages), data, heap, a locked mapping, an empty one or
        // the vdso.
        assert_eq!(
            got,
            vec![
                CleanMapping {
                    start: 0x55d0a0000000,
                    end: 0x55d0a0100000,
                    rss_kb: 236
                },
                CleanMapping {
                    start: 0x55d0a0100000,
                    end: 0x55d0a0300000,
                    rss_kb: 1460
                },
            ]
        );
    }

    /// Resident kB of this process's clean file mappings.
    fn clean_rss_kb() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        clean_file_mappings(&smaps).iter().map(|m| m.rss_kb).sum()
    }

    #[test]
    fn the_process_gets_smaller_and_runs_on() {
        let before = clean_rss_kb();
        let dropped = release_startup_memory().unwrap();
        assert!(dropped > 0, "nothing was resident to drop");
        // This code, the allocator and the harness run on from pages read back.
        let squares: Vec<u64> = (0..1000u64).map(|i| i * i).collect();
        assert_eq!(squares[999], 998_001);
        let after = clean_rss_kb();
        assert!(
            after < before,
            "clean file pages: {before} kB resident before, {after} kB after"
        );
    }
}
