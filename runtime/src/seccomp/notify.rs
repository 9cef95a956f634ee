//! seccomp user notification (SCMP_ACT_NOTIFY): the filter is installed with
//! SECCOMP_FILTER_FLAG_NEW_LISTENER, and the listener fd goes to the seccomp agent on
//! `linux.seccomp.listenerPath`, as the runtime-spec's "container process state" says: one
//! connection per process, one message of JSON with the fd as SCM_RIGHTS, then the
//! connection is closed.
//!
//! The parent (create or exec) connects before it clones, where the socket's path is the
//! host's, and the child inherits the connection; the child installs the filter and sends at
//! once, before any other syscall the filter could hold for an agent that has no fd yet.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{sendmsg, shutdown, ControlMessage, MsgFlags, Shutdown};

/// The name of the seccomp listener in the state's `fds`.
pub const SECCOMP_FD_NAME: &str = "seccompFd";

/// The version of the runtime-spec whose process state tug sends.
const OCI_VERSION: &str = "1.2.0";

/// Where a child sends its listener: the agent's connection and the process state to send.
pub struct Agent<'a> {
    pub socket: BorrowedFd<'a>,
    pub process_state: String,
}

/// Connects to the agent at `listener_path` (a SOCK_STREAM unix socket, as the spec asks).
pub fn connect(listener_path: &Path) -> Result<OwnedFd, String> {
    std::os::unix::net::UnixStream::connect(listener_path)
        .map(OwnedFd::from)
        .map_err(|e| {
            format!(
                "linux.seccomp.listenerPath {}: cannot reach the seccomp agent: {e}",
                listener_path.display()
            )
        })
}

/// The container process state: the process's pid (as the host sees it), the listener's
/// metadata and the container's state (`tug state`'s object).
pub fn process_state(pid: i32, metadata: &str, container_state: serde_json::Value) -> String {
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "fds": [SECCOMP_FD_NAME],
        "pid": pid,
        "metadata": metadata,
        "state": container_state,
    })
    .to_string()
}

/// For init: the process state from the container state the parent sent (its `pid` is
/// init's, as the host sees it).
pub fn process_state_of_init(container_state: &str, metadata: &str) -> Result<String, String> {
    let state: serde_json::Value = serde_json::from_str(container_state)
        .map_err(|e| format!("the container state from the parent: {e}"))?;
    let pid = state["pid"].as_i64().unwrap_or(0) as i32;
    Ok(process_state(pid, metadata, state))
}

/// Sends `listener` with `agent.process_state` in one message, then shuts the connection
/// down (the agent sees its end); the listener fd is closed here.
pub fn hand_over(agent: &Agent, listener: OwnedFd) -> Result<(), String> {
    let fds = [listener.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let bytes = agent.process_state.as_bytes();
    let mut sent = sendmsg::<()>(
        agent.socket.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| format!("linux.seccomp.listenerPath: send the listener to the agent: {e}"))?;
    // A stream may take the rest in more writes; the fd went with the first byte.
    while sent < bytes.len() {
        sent += sendmsg::<()>(
            agent.socket.as_raw_fd(),
            &[IoSlice::new(&bytes[sent..])],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| format!("linux.seccomp.listenerPath: send the state to the agent: {e}"))?;
    }
    let _ = shutdown(agent.socket.as_raw_fd(), Shutdown::Both);
    drop(listener);
    Ok(())
}
