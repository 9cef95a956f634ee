//! The per-container monitor: `tugboat-monitor`, a small process that is the container's
//! parent instead of the agent.
//!
//! The agent starts it and returns at once (the monitor forks, the first process exits,
//! the second calls `setsid` and becomes a child subreaper). The monitor creates and starts
//! the container through `tug_runtime` (or another OCI runtime's command line), holds the
//! read ends of its stdout and stderr and copies them, each line with its time and stream
//! ([`logfmt`]), into a size-capped log file that is rotated once (or a ring in memory,
//! [`logring`]), waits for the container's init, deletes
//! the container (cgroup and runtime state) and writes the exit status to `exit.json`. The
//! agent may stop, crash or be upgraded meanwhile: the container runs on, and a restarted
//! agent finds `monitor.json` (the monitor's pid and start time) or `exit.json` in the
//! instance directory.
//!
//! One of these lives per running container, so this crate stays small: std, libc, nix,
//! serde_json, humantime (the log's times) and tug-runtime; no async runtime, HTTP, YAML or argument-parsing crates. The
//! agent uses this library for the file names, records and ring reading, and runs the
//! `tugboat-monitor` executable found next to its own (docs/ARCHITECTURE.md, "The
//! monitor").
//!
//! It runs before any thread exists: `Runtime::create` needs a single-threaded process.

mod args;
pub mod external;
pub mod logfmt;
pub mod logring;
mod records;
mod supervise;
pub mod trim;

pub use args::{MonitorArgs, DEFAULT_LOG_MAX_BYTES};
pub use logring::LogMode;
pub use records::{
    lock_held, monitor_alive, now_ms, oom_kills, read_json, take_lock, write_json, ExitRecord,
    MonitorRecord, EXIT_FILE, LOCK_FILE, LOG_FILE, MONITOR_FILE,
};
pub use supervise::{run, LogWriter};

/// The monitor executable's file name; the agent looks for it next to its own executable.
pub const EXECUTABLE: &str = "tugboat-monitor";
