//! Root tests: linux.seccomp in a real busybox container.

mod common;

use common::{id, no_cgroup_left, show, Env};
use serde_json::{json, Value};

/// Runs `script` with busybox's sh in a container whose config `edit` changes; returns the
/// exit code and what the script printed (stderr folded into stdout).
fn run_sh(name: &str, script: &str, edit: impl FnOnce(&mut Value)) -> (Option<i32>, String) {
    let mut env = Env::new(&["sh", "-c", &format!("exec 2>&1; {script}")]);
    env.edit(|s| {
        s["root"]["readonly"] = json!(false);
        edit(s);
    });
    let id = id(name);
    let out = env.run(&id);
    assert!(!env.state_root().join(&id).exists(), "{}", show(&out));
    no_cgroup_left(&id);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code(), format!("{text}{}", show(&out)))
}

fn block_mkdir(errno: u32) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": errno}],
    })
}

#[test]
fn a_blocked_syscall_fails_with_the_configured_errno() {
    skip_unless_root!("a_blocked_syscall_fails_with_the_configured_errno");
    // With no_new_privs the filter goes on right before execve; without, before init drops
    // its capabilities: both must reach the container's process.
    for (nnp, errno, message) in [
        (true, 1, "Operation not permitted"),
        (false, 38, "Function not implemented"),
    ] {
        let (code, out) = run_sh(
            &format!("mkdir{errno}"),
            "/bin/busybox mkdir /tmp/x; echo rc=$?; touch /tmp/y && echo touched",
            |s| {
                s["process"]["noNewPrivileges"] = json!(nnp);
                s["linux"]["seccomp"] = block_mkdir(errno);
            },
        );
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains(message), "nnp {nnp}: {out}");
        assert!(out.contains("rc=1"), "{out}");
        assert!(out.contains("touched"), "{out}");
    }
}

#[test]
fn an_argument_condition_blocks_only_matching_calls() {
    skip_unless_root!("an_argument_condition_blocks_only_matching_calls");
    // chmod to 0700 is refused (chmod has the mode in arg 1, fchmodat in arg 2); 0755 is not.
    let rule = |names: &[&str], index: u32| {
        json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
               "args": [{"index": index, "value": 0o700, "op": "SCMP_CMP_EQ"}]})
    };
    let (code, out) = run_sh(
        "chmod",
        "touch /tmp/f; /bin/busybox chmod 700 /tmp/f; echo first=$?; \
         /bin/busybox chmod 755 /tmp/f; echo second=$?",
        |s| {
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [rule(&["chmod"], 1), rule(&["fchmodat", "fchmodat2"], 2)],
            });
        },
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(out.contains("first=1"), "{out}");
    assert!(out.contains("second=0"), "{out}");
}

#[test]
fn the_default_profile_blocks_mount_even_with_cap_sys_admin() {
    skip_unless_root!("the_default_profile_blocks_mount_even_with_cap_sys_admin");
    let profile = serde_json::to_value(tug_runtime::seccomp::default_profile()).unwrap();
    let with_sys_admin = |s: &mut Value| {
        for set in ["bounding", "effective", "permitted"] {
            let caps = &mut s["process"]["capabilities"][set];
            if let Some(list) = caps.as_array_mut() {
                list.push(json!("CAP_SYS_ADMIN"));
            } else {
                *caps = json!(["CAP_SYS_ADMIN"]);
            }
        }
    };
    let script = "mount -t tmpfs none /tmp; echo rc=$?";
    // Without a filter the mount succeeds, so the refusal below is the filter's.
    let (_, out) = run_sh("nofilter", script, |s| {
        with_sys_admin(s);
        if let Some(linux) = s["linux"].as_object_mut() {
            linux.remove("seccomp");
        }
    });
    assert!(out.contains("rc=0"), "{out}");
    let (code, out) = run_sh("default", script, |s| {
        with_sys_admin(s);
        s["linux"]["seccomp"] = profile.clone();
    });
    assert_eq!(code, Some(0), "{out}");
    // busybox mount words EPERM as "permission denied (are you root?)".
    assert!(out.contains("permission denied"), "{out}");
    assert!(out.contains("rc=1"), "{out}");

    let mut env = Env::new(&["true"]);
    env.edit(|s| s["linux"]["seccomp"] = profile.clone());
    let out = env.run(&id("true"));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

#[test]
fn an_unknown_syscall_is_skipped_with_a_warning_when_that_widens_nothing() {
    skip_unless_root!("an_unknown_syscall_is_skipped_with_a_warning_when_that_widens_nothing");
    // The LOG rule's unknown name would get the default (allow): what it asked anyway. The
    // refused case (an ERRNO rule under an allowing default) is in the test below.
    let (code, text) = run_sh(
        "unknown-skipped",
        "mkdir /made 2>/dev/null && echo mkdir ok || echo mkdir denied",
        |s| {
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
                    {"names": ["getpid", "some_future_call"], "action": "SCMP_ACT_LOG"},
                ],
            })
        },
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.lines().any(|l| l == "mkdir denied"), "{text}");
    assert!(
        text.contains("syscalls[1].names[1]")
            && text.contains("skipping unknown syscall some_future_call"),
        "no warning naming the field: {text}"
    );
}

#[test]
fn a_bad_profile_fails_create_naming_the_field_and_leaves_nothing() {
    skip_unless_root!("a_bad_profile_fails_create_naming_the_field_and_leaves_nothing");
    let bad_name = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_LOG"},
            {"names": ["mkdir", "nosuchcall"], "action": "SCMP_ACT_ERRNO"},
        ],
    });
    let bad_action = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_SOMETIMES"}],
    });
    let notify = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}],
    });
    for (name, profile, field, word) in [
        (
            "badname",
            bad_name,
            "linux.seccomp.syscalls[1].names[1]",
            "nosuchcall",
        ),
        (
            "badaction",
            bad_action,
            "linux.seccomp.syscalls[0].action",
            "SCMP_ACT_SOMETIMES",
        ),
        (
            "notify",
            notify,
            "linux.seccomp.syscalls[0].action",
            "SCMP_ACT_NOTIFY",
        ),
    ] {
        let mut env = Env::new(&["true"]);
        env.edit(|s| s["linux"]["seccomp"] = profile);
        let id = id(name);
        let b = env.bundle();
        let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
        assert!(!out.status.success(), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field) && err.contains(word), "{}", show(&out));
        assert!(
            !env.state_root().join(&id).exists(),
            "state dir of {id} left"
        );
        no_cgroup_left(&id);
    }
}

#[test]
fn an_exec_gets_the_containers_filter() {
    skip_unless_root!("an_exec_gets_the_containers_filter");
    let mut env = Env::new(&["sleep", "100"]);
    env.edit(|s| {
        s["root"]["readonly"] = json!(false);
        s["linux"]["seccomp"] = block_mkdir(1);
    });
    let id = id("exec");
    env.create(&id);
    env.ok(&["start", &id]);
    let out = env.tug(&[
        "exec",
        &id,
        "sh",
        "-c",
        "/bin/busybox mkdir /tmp/x 2>&1; echo rc=$?",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    env.ok(&["delete", "--force", &id]);
    assert!(text.contains("Operation not permitted"), "{}", show(&out));
    assert!(text.contains("rc=1"), "{}", show(&out));
    no_cgroup_left(&id);
}

/// A seccomp agent of the test's own on a unix socket: takes one connection, reads the
/// process state and the listener fd that came with it, and with `answer` answers one
/// notification with "success, 0" without running the call; returns the state and the
/// syscall number (-1 without `answer`).
fn agent(
    path: &std::path::Path,
    answer: bool,
) -> std::thread::JoinHandle<Result<(Value, i32), String>> {
    use std::io::{IoSliceMut, Read};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixListener;

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let wait = |fd: std::os::fd::BorrowedFd, what: &str| -> Result<(), String> {
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(20_000u16)) {
                Ok(1) => Ok(()),
                other => Err(format!("no {what} within 20 s: {other:?}")),
            }
        };
        wait(listener.as_fd(), "connection")?;
        let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 16];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let (n, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| e.to_string())?;
            let fd = msg
                .cmsgs()
                .map_err(|e| e.to_string())?
                .find_map(|c| match c {
                    ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                    _ => None,
                });
            (msg.bytes, fd)
        };
        let fd = fd.ok_or("no fd came with the state")?;
        // SAFETY: the fd just received is ours.
        let notify = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut text = buf[..n].to_vec();
        // The runtime closes the connection after the state: read to its end.
        conn.read_to_end(&mut text).map_err(|e| e.to_string())?;
        let state: Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        if !answer {
            return Ok((state, -1));
        }

        // struct seccomp_notif (80 bytes) and seccomp_notif_resp (24 bytes).
        const RECV: libc::c_ulong = 0xc050_2100;
        const SEND: libc::c_ulong = 0xc018_2101;
        wait(notify.as_fd(), "notification")?;
        let mut req = [0u64; 10];
        // SAFETY: RECV fills the 80-byte struct.
        if unsafe { libc::ioctl(notify.as_raw_fd(), RECV, req.as_mut_ptr()) } != 0 {
            return Err(format!("NOTIF_RECV: {}", std::io::Error::last_os_error()));
        }
        let nr = (req[2] & 0xffff_ffff) as i32;
        // id, val 0, error 0, flags 0: the call "succeeds" without the kernel running it.
        let resp = [req[0], 0, 0];
        // SAFETY: SEND reads the 24-byte struct.
        if unsafe { libc::ioctl(notify.as_raw_fd(), SEND, resp.as_ptr()) } != 0 {
            return Err(format!("NOTIF_SEND: {}", std::io::Error::last_os_error()));
        }
        Ok((state, nr))
    })
}

#[test]
fn a_seccomp_agent_gets_the_listener_and_answers_for_the_container() {
    skip_unless_root!("a_seccomp_agent_gets_the_listener_and_answers_for_the_container");
    // Without no_new_privs the filter goes on before the capabilities go; with it, last in
    // create: both hand the listener over during create.
    for nnp in [false, true] {
        let mut env = Env::new(&[
            "sh",
            "-c",
            "mkdir /tmp/by-agent && echo mkdir-ok; [ -d /tmp/by-agent ] || echo not-made",
        ]);
        let socket = env.dir.path().join("agent.sock");
        env.edit(|s| {
            s["root"]["readonly"] = json!(false);
            s["process"]["noNewPrivileges"] = json!(nnp);
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "listenerPath": socket,
                "listenerMetadata": "tug-test-metadata",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
            });
        });
        let agent = agent(&socket, true);
        let id = id(&format!("notify-{nnp}"));
        let out = env.run(&id);
        let answered = agent.join().unwrap();
        let (state, nr) = answered.unwrap_or_else(|e| panic!("agent: {e}\n{}", show(&out)));
        assert!(out.status.success(), "{}", show(&out));
        // The agent said yes, and nothing was made: the kernel never ran the call.
        assert_eq!(String::from_utf8_lossy(&out.stdout), "mkdir-ok\nnot-made\n");
        assert!(
            [libc::SYS_mkdir, libc::SYS_mkdirat].contains(&(nr as i64)),
            "{nr}"
        );
        assert_eq!(state["fds"], json!(["seccompFd"]), "{state}");
        assert_eq!(state["metadata"], json!("tug-test-metadata"), "{state}");
        assert_eq!(state["state"]["id"], json!(id), "{state}");
        assert_eq!(state["state"]["status"], json!("creating"), "{state}");
        assert!(state["pid"].as_i64().unwrap() > 1, "{state}");
        assert_eq!(state["pid"], state["state"]["pid"], "{state}");
        assert!(!env.state_root().join(&id).exists());
        no_cgroup_left(&id);
    }
}

#[test]
fn an_exec_hands_its_own_listener_to_the_agent() {
    skip_unless_root!("an_exec_hands_its_own_listener_to_the_agent");
    let mut env = Env::new(&["sleep", "1000"]);
    let socket = env.dir.path().join("agent.sock");
    env.edit(|s| {
        s["root"]["readonly"] = json!(false);
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": socket,
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
        });
    });
    let id = id("notify-exec");
    let first = agent(&socket, false);
    env.create(&id);
    let (created, _) = first.join().unwrap().unwrap();
    env.ok(&["start", &id]);
    let init = common::init_pid(&env, &id);
    assert_eq!(created["pid"], json!(init), "{created}");
    // Each process gets its own listener, over a connection of its own.
    std::fs::remove_file(&socket).unwrap();
    let second = agent(&socket, true);
    let out = env.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "mkdir /tmp/by-agent && echo mkdir-ok; [ -d /tmp/by-agent ] || echo not-made",
    ]);
    let (state, _) = second.join().unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mkdir-ok\nnot-made\n");
    assert_eq!(state["state"]["status"], json!("running"), "{state}");
    assert_eq!(state["state"]["pid"], json!(init), "{state}");
    assert_ne!(state["pid"], json!(init), "{state}");
    env.ok(&["delete", "--force", &id]);
    no_cgroup_left(&id);
}

#[test]
fn an_unreachable_seccomp_agent_fails_create_by_field() {
    skip_unless_root!("an_unreachable_seccomp_agent_fails_create_by_field");
    let mut env = Env::new(&["true"]);
    let socket = env.dir.path().join("nobody.sock");
    env.edit(|s| {
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": socket,
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}],
        });
    });
    let id = id("notify-nobody");
    let b = env.bundle();
    let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("linux.seccomp.listenerPath"),
        "{}",
        show(&out)
    );
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
}
