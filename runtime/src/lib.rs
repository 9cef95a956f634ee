//! tug-runtime: a daemonless OCI container runtime.
//!
//! The library does the work; the `tug` binary parses arguments and calls [`Runtime`].
//! See docs/ARCHITECTURE.md for the process model.

pub mod cgroups;
pub mod channel;
mod clone;
pub mod container;
pub mod devices_bpf;
pub mod exec;
pub mod features;
mod finalize;
pub mod hooks;
mod init;
pub mod inspect;
pub mod jsonpath;
pub mod netdev;
pub mod placement;
pub mod procattr;
pub mod rootfs;
pub mod rootless;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod state;
pub mod syscall;
pub mod tty;

pub use container::{CreateOptions, Error, Listed, Runtime};
pub use state::Status;
