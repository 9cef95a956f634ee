//! What an instance uses, read from its cgroup (`/tug/<id>`, as the bundle sets it): cgroup
//! v2 files when the unified hierarchy has the controllers, else the v1 hierarchies (hybrid
//! hosts). The root is a parameter so tests lay out a fake tree in a temp dir.

use std::path::Path;

/// Counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads the instance's cgroup under `root` (normally /sys/fs/cgroup).
pub fn read_usage(root: &Path, id: &str) -> Option<Usage> {
    let v2 = root.join("tug").join(id);
    if v2.join("memory.current").exists() {
        let cpu_us = std::fs::read_to_string(v2.join("cpu.stat"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
        return Some(Usage {
            cpu_ns: cpu_us.unwrap_or(0) * 1000,
            memory_bytes: read_u64(&v2.join("memory.current")).unwrap_or(0),
            pids: read_u64(&v2.join("pids.current")).unwrap_or(0),
        });
    }
    let v1 = |controller: &str, file: &str| {
        read_u64(&root.join(controller).join("tug").join(id).join(file))
    };
    let memory = v1("memory", "memory.usage_in_bytes")?;
    let cpu = v1("cpu,cpuacct", "cpuacct.usage").or_else(|| v1("cpuacct", "cpuacct.usage"));
    Some(Usage {
        cpu_ns: cpu.unwrap_or(0),
        memory_bytes: memory,
        pids: v1("pids", "pids.current").unwrap_or(0),
    })
}

/// Bytes read from and written to block devices by the instance's cgroup (v2 `io.stat`, v1
/// `blkio.throttle.io_service_bytes`), summed over devices.
pub fn read_io(root: &Path, id: &str) -> Option<(u64, u64)> {
    if let Ok(text) = std::fs::read_to_string(root.join("tug").join(id).join("io.stat")) {
        let mut sums = (0, 0);
        for field in text.split_whitespace() {
            let value = |key: &str| field.strip_prefix(key).and_then(|v| v.parse::<u64>().ok());
            sums.0 += value("rbytes=").unwrap_or(0);
            sums.1 += value("wbytes=").unwrap_or(0);
        }
        return Some(sums);
    }
    let text = std::fs::read_to_string(
        root.join("blkio/tug")
            .join(id)
            .join("blkio.throttle.io_service_bytes"),
    )
    .ok()?;
    let mut sums = (0, 0);
    for line in text.lines() {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [_, "Read", n] => sums.0 += n.parse::<u64>().unwrap_or(0),
            [_, "Write", n] => sums.1 += n.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    Some(sums)
}

/// Bytes received and sent by the network namespace of process `pid` (`/proc/PID/net/dev`,
/// every interface but loopback).
pub fn read_network(proc_root: &Path, pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("net/dev")).ok()?;
    let mut sums = (0, 0);
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let c: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if c.len() >= 9 {
            sums.0 += c[0];
            sums.1 += c[8];
        }
    }
    Some(sums)
}

/// Processes the OOM killer killed in the instance's cgroup (the monitor reads it too).
pub use tugboat_monitor::oom_kills;

/// CPU in millicores between two readings `elapsed_ms` apart.
pub fn cpu_millis(before: &Usage, after: &Usage, elapsed_ms: u64) -> u64 {
    if elapsed_ms == 0 {
        return 0;
    }
    after.cpu_ns.saturating_sub(before.cpu_ns) / 1000 / elapsed_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_network_counters_are_summed() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("v2/tug/web-1");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(
            v2.join("io.stat"),
            "8:0 rbytes=100 wbytes=20 rios=1 wios=1\n8:16 rbytes=5 wbytes=0 rios=1 wios=0\n",
        )
        .unwrap();
        assert_eq!(read_io(&dir.path().join("v2"), "web-1"), Some((105, 20)));
        let v1 = dir.path().join("v1/blkio/tug/web-1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(
            v1.join("blkio.throttle.io_service_bytes"),
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n",
        )
        .unwrap();
        assert_eq!(read_io(&dir.path().join("v1"), "web-1"), Some((4096, 8192)));
        let net = dir.path().join("proc/42/net");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(
            net.join("dev"),
            "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0\n  eth0:    1234      10    0    0    0     0          0         0     5678      12    0    0    0     0       0          0\n",
        )
        .unwrap();
        assert_eq!(
            read_network(&dir.path().join("proc"), 42),
            Some((1234, 5678))
        );
    }

    #[test]
    fn v1_and_v2_trees_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        for (c, f, v) in [
            ("memory", "memory.usage_in_bytes", "1048576"),
            ("cpu,cpuacct", "cpuacct.usage", "2000000000"),
            ("pids", "pids.current", "3"),
        ] {
            let d = v1.join(c).join("tug/web-1");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(f), v).unwrap();
        }
        let u = read_usage(&v1, "web-1").unwrap();
        assert_eq!(
            u,
            Usage {
                cpu_ns: 2_000_000_000,
                memory_bytes: 1 << 20,
                pids: 3
            }
        );
        let v2 = dir.path().join("v2/tug/web-1");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.current"), "4096\n").unwrap();
        std::fs::write(v2.join("cpu.stat"), "usage_usec 500\nuser_usec 400\n").unwrap();
        let u = read_usage(&dir.path().join("v2"), "web-1").unwrap();
        assert_eq!(u.cpu_ns, 500_000);
        assert_eq!(u.memory_bytes, 4096);
        assert!(read_usage(dir.path(), "nothing").is_none());
        // 1 s of CPU over 2 s is half a core.
        let before = Usage::default();
        let after = Usage {
            cpu_ns: 1_000_000_000,
            ..Default::default()
        };
        assert_eq!(cpu_millis(&before, &after, 2000), 500);
    }

    #[test]
    fn oom_kills_are_read_from_v1_and_v2() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1/memory/tug/web-1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&dir.path().join("v1"), "web-1"), Some(2));
        // An old v1 kernel: no oom_kill line; a hit of the limit counts.
        std::fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        std::fs::write(v1.join("memory.failcnt"), "17\n").unwrap();
        assert_eq!(oom_kills(&dir.path().join("v1"), "web-1"), Some(1));
        let v2 = dir.path().join("v2/tug/web-1");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&dir.path().join("v2"), "web-1"), Some(1));
        assert_eq!(oom_kills(dir.path(), "nothing"), None);
    }
}
