use super::*;
use serde_json::json;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

fn profile(v: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(v).unwrap()
}

fn native() -> ArchTable {
    ArchTable::NATIVE.unwrap()
}

fn nr(name: &str) -> u32 {
    native().lookup(name).unwrap()
}

/// What `p` returns for syscall `name` on the host's arch.
fn verdict(p: &Program, name: &str, args: [u64; 6]) -> u32 {
    bpf::run(&p.insns, nr(name), native().audit(), args)
}

fn compile_err(v: serde_json::Value) -> SeccompError {
    compile(&profile(v)).unwrap_err()
}

#[test]
fn every_action_maps_to_its_return_value() {
    let cases = [
        ("SCMP_ACT_KILL", libc::SECCOMP_RET_KILL_THREAD),
        ("SCMP_ACT_KILL_THREAD", libc::SECCOMP_RET_KILL_THREAD),
        ("SCMP_ACT_KILL_PROCESS", KILL_PROCESS),
        ("SCMP_ACT_TRAP", libc::SECCOMP_RET_TRAP),
        ("SCMP_ACT_ERRNO", errno(libc::EPERM)),
        ("SCMP_ACT_TRACE", libc::SECCOMP_RET_TRACE | 1),
        ("SCMP_ACT_LOG", libc::SECCOMP_RET_LOG),
        ("SCMP_ACT_ALLOW", ALLOW),
    ];
    for (action, want) in cases {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": action}],
        })))
        .unwrap();
        assert_eq!(verdict(&p, "getcwd", [0; 6]), want, "{action}");
        assert_eq!(verdict(&p, "getpid", [0; 6]), ALLOW, "{action}");
    }
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
        ],
    })))
    .unwrap();
    assert_eq!(verdict(&p, "mkdir", [0; 6]), errno(13));
    assert_eq!(verdict(&p, "mkdirat", [0; 6]), errno(13));
    assert_eq!(verdict(&p, "getpid", [0; 6]), ALLOW);
    assert_eq!(verdict(&p, "read", [0; 6]), errno(38));
}

#[test]
fn notify_and_bad_errno_values_name_their_field() {
    // NOTIFY needs an agent to send the listener to.
    let e = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_LOG"},
            {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"},
        ],
    }));
    assert_eq!(e.field(), "linux.seccomp.listenerPath");
    assert!(e.to_string().contains("syscalls[1].action"), "{e}");
    // Not as the default, and not for the sendmsg that hands the listener over.
    let e = compile_err(json!({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/run/a"}));
    assert_eq!(e.field(), "linux.seccomp.defaultAction");
    let e = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/a",
        "syscalls": [{"names": ["mkdir", "sendmsg"], "action": "SCMP_ACT_NOTIFY"}],
    }));
    assert_eq!(e.field(), "linux.seccomp.syscalls[0].names[1]");
    let e = compile_err(json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "run/agent"}));
    assert_eq!(e.field(), "linux.seccomp.listenerPath");
    let e = compile_err(json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "x"}));
    assert_eq!(e.field(), "linux.seccomp.listenerMetadata");
    // With a listener: the filter asks the kernel for one; a listenerPath alone does not.
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/a",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}],
    })))
    .unwrap();
    assert!(p.notifies());
    assert_eq!(verdict(&p, "mkdir", [0; 6]), libc::SECCOMP_RET_USER_NOTIF);
    let p = compile(&profile(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/a"}),
    ))
    .unwrap();
    assert!(!p.notifies());

    let e = compile_err(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}));
    assert_eq!(e.field(), "linux.seccomp.defaultErrnoRet");
    assert!(e.to_string().contains("70000"), "{e}");

    let e = compile_err(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}],
    }));
    assert_eq!(e.field(), "linux.seccomp.syscalls[0].errnoRet");

    let e = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
    }));
    assert_eq!(e.field(), "linux.seccomp.flags");
    assert!(e.to_string().contains("no rule is SCMP_ACT_NOTIFY"), "{e}");
}

#[test]
fn features_list_what_compile_takes() {
    let f = features();
    assert_eq!(f["enabled"], json!(true));
    for action in f["actions"].as_array().unwrap() {
        let p = profile(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/a",
                               "syscalls": [{"names": ["getcwd"], "action": action}]}),
        );
        compile(&p).unwrap();
    }
    let flags = f["supportedFlags"].clone();
    assert!(!flags.as_array().unwrap().is_empty(), "{f}");
    // (WAIT_KILLABLE_RECV is for a listener: a NOTIFY rule with its agent.)
    compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": flags,
        "listenerPath": "/run/a", "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_NOTIFY"}]})))
    .unwrap();
    assert!(f["archs"]
        .as_array()
        .unwrap()
        .contains(&json!(native().name())));
}

#[test]
fn an_unknown_action_fails_parsing_at_its_field() {
    let text = r#"{"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                     {"names": ["mkdir"], "action": "SCMP_ACT_MAYBE"}]}"#;
    let (field, _) = crate::jsonpath::from_slice::<LinuxSeccomp>(text.as_bytes()).unwrap_err();
    assert_eq!(field, "syscalls[1].action");
}

#[test]
fn unknown_syscall_names_name_their_field_unless_another_arch_may_have_them() {
    let bad = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_LOG"},
            {"names": ["mkdir", "nosuchcall"], "action": "SCMP_ACT_ERRNO"},
        ],
    });
    let e = compile(&profile(bad.clone())).unwrap_err();
    assert_eq!(e.field(), "linux.seccomp.syscalls[1].names[1]");
    assert!(e.to_string().contains("\"nosuchcall\""), "{e}");

    // An arch tug has no table for may have the name: skipped.
    let mut multi = bad.clone();
    multi["architectures"] = json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_S390X"]);
    let p = compile(&profile(multi)).unwrap();
    assert_eq!(verdict(&p, "mkdir", [0; 6]), errno(libc::EPERM));

    // A name of another listed arch tug knows: fine, and only that arch's section has it.
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": [{"names": ["mkdir", "arm_fadvise64_64", "vm86"], "action": "SCMP_ACT_ERRNO"}],
    })))
    .unwrap();
    assert_eq!(verdict(&p, "getpid", [0; 6]), ALLOW);

    // When the default denies (engines' allow-lists), unknown names are skipped: they stay
    // denied. podman's profile names pciconfig_iobase, which x86 does not have.
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mount", "pciconfig_iobase"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["read", "some_future_call"], "action": "SCMP_ACT_ALLOW"},
        ],
    })))
    .unwrap();
    assert_eq!(verdict(&p, "read", [0; 6]), ALLOW);
    assert_eq!(verdict(&p, "mount", [0; 6]), errno(1));
    assert_eq!(verdict(&p, "write", [0; 6]), errno(38));
    // A rule that lets the call through, under a default that does too: skipping it
    // changes nothing, so it is skipped (with a warning).
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getpid", "some_future_call"], "action": "SCMP_ACT_LOG"},
        ],
    })))
    .unwrap();
    assert_eq!(verdict(&p, "getpid", [0; 6]), libc::SECCOMP_RET_LOG);
    assert_eq!(verdict(&p, "mkdir", [0; 6]), errno(libc::EPERM));
    let mut log = bad.clone();
    log["defaultAction"] = json!("SCMP_ACT_LOG");
    assert_eq!(
        compile(&profile(log)).unwrap_err().field(),
        "linux.seccomp.syscalls[1].names[1]"
    );
}

#[test]
fn two_actions_for_one_syscall_give_the_stricter() {
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["read", "setns", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["setns", "write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
            {"names": ["read"], "action": "SCMP_ACT_LOG"},
        ],
    })))
    .unwrap();
    assert_eq!(verdict(&p, "setns", [0; 6]), errno(1));
    assert_eq!(verdict(&p, "write", [0; 6]), errno(1));
    assert_eq!(verdict(&p, "read", [0; 6]), libc::SECCOMP_RET_LOG);
}

#[test]
fn bad_argument_indexes_name_their_field() {
    let e = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                               {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}],
    }));
    assert_eq!(e.field(), "linux.seccomp.syscalls[0].args[1].index");
}

#[test]
fn argument_conditions_compile_and_match() {
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            // All must hold: fd 1 and a count over 4096.
            {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 27,
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                      {"index": 2, "value": 4096, "op": "SCMP_CMP_GT"}]},
            // Same argument twice: either may hold (runc's rule).
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 0xffffffffu64, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 0x10000000u64, "valueTwo": 0x10000000u64,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            // Conditional rules come before the syscall's unconditional action.
            {"names": ["read"], "action": "SCMP_ACT_LOG"},
            {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9,
             "args": [{"index": 0, "value": 100, "op": "SCMP_CMP_GE"}]},
        ],
    })))
    .unwrap();
    assert_eq!(verdict(&p, "write", [1, 0, 5000, 0, 0, 0]), errno(27));
    assert_eq!(verdict(&p, "write", [1, 0, 4096, 0, 0, 0]), ALLOW);
    assert_eq!(verdict(&p, "write", [2, 0, 5000, 0, 0, 0]), ALLOW);
    assert_eq!(verdict(&p, "personality", [8, 0, 0, 0, 0, 0]), errno(1));
    assert_eq!(
        verdict(&p, "personality", [0xffff_ffff, 0, 0, 0, 0, 0]),
        errno(1)
    );
    assert_eq!(verdict(&p, "personality", [0, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(verdict(&p, "clone", [0x1001_0011, 0, 0, 0, 0, 0]), errno(1));
    assert_eq!(verdict(&p, "clone", [0x0001_0011, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(verdict(&p, "read", [100, 0, 0, 0, 0, 0]), errno(9));
    assert_eq!(
        verdict(&p, "read", [3, 0, 0, 0, 0, 0]),
        libc::SECCOMP_RET_LOG
    );
}

#[test]
fn the_default_profile_compiles_and_blocks_what_it_says() {
    let p = compile(&default_profile()).unwrap();
    for name in [
        "keyctl",
        "add_key",
        "request_key",
        "ptrace",
        "mount",
        "umount2",
        "reboot",
        "kexec_load",
        "kexec_file_load",
        "bpf",
        "init_module",
        "finit_module",
        "delete_module",
        "swapon",
        "swapoff",
        "pivot_root",
        "open_by_handle_at",
        "perf_event_open",
        "userfaultfd",
    ] {
        assert_eq!(verdict(&p, name, [0; 6]), errno(libc::EPERM), "{name}");
    }
    for name in [
        "read",
        "execve",
        "setresuid",
        "capset",
        "prctl",
        "close_range",
    ] {
        assert_eq!(verdict(&p, name, [0; 6]), ALLOW, "{name}");
    }
    let newuser = libc::CLONE_NEWUSER as u64;
    assert_eq!(
        verdict(&p, "unshare", [newuser, 0, 0, 0, 0, 0]),
        errno(libc::EPERM)
    );
    assert_eq!(
        verdict(&p, "unshare", [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(
        verdict(&p, "clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(verdict(&p, "clone3", [0; 6]), errno(libc::ENOSYS));
    // The 32-bit compat arch has the same rules; other arches are killed.
    let compat = ArchTable::COMPAT.unwrap();
    let mount32 = compat.lookup("mount").unwrap();
    assert_eq!(
        bpf::run(&p.insns, mount32, compat.audit(), [0; 6]),
        errno(libc::EPERM)
    );
    let getpid32 = compat.lookup("getpid").unwrap();
    assert_eq!(bpf::run(&p.insns, getpid32, compat.audit(), [0; 6]), ALLOW);
    assert_eq!(bpf::run(&p.insns, 1, 0x1234, [0; 6]), KILL_PROCESS);
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        bpf::run(
            &p.insns,
            bpf::X32_SYSCALL_BIT | nr("mount"),
            native().audit(),
            [0; 6]
        ),
        KILL_PROCESS
    );
}

/// Runs `f` in a forked child with `p` installed (no_new_privs set first, so no root is
/// needed) and returns the child's exit code.
fn in_child(p: &Program, f: fn() -> i32) -> i32 {
    // SAFETY: the child only makes raw syscalls (install allocates nothing) and _exits.
    match unsafe { libc::fork() } {
        0 => unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let code = match install(p) {
                Ok(_) => f(),
                Err(_) => 200,
            };
            libc::_exit(code)
        },
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn the_kernel_takes_the_programs_and_applies_them() {
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 33,
             "args": [{"index": 1, "value": 4242, "op": "SCMP_CMP_EQ"}]},
        ],
    })))
    .unwrap();
    assert_eq!(
        p.flags(),
        libc::SECCOMP_FILTER_FLAG_TSYNC | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
    );
    let mkdir = || {
        // SAFETY: a raw mkdirat on a static, NUL-terminated path.
        let r = unsafe { libc::mkdirat(libc::AT_FDCWD, c"/nonexistent-tug/x".as_ptr(), 0o700) };
        if r == 0 {
            0
        } else {
            last_errno()
        }
    };
    assert_eq!(in_child(&p, mkdir), 38);
    let conditioned = || {
        // SAFETY: getpriority with integer arguments.
        let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 4242) };
        let hit = r == -1 && last_errno() == 33;
        // SAFETY: as above; the raw syscall returns 20 - nice for this process.
        let own = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) };
        if hit && own > 0 {
            0
        } else {
            1
        }
    };
    assert_eq!(in_child(&p, conditioned), 0);

    // An allow-list of every other syscall: sections longer than a conditional jump reaches.
    let names: Vec<&str> = syscalls::Sysno::iter()
        .map(|s| s.name())
        .filter(|n| !n.starts_with("mkdir"))
        .collect();
    let long = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}],
    })))
    .unwrap();
    assert!(long.len() > 600, "{long:?}");
    assert_eq!(in_child(&long, mkdir), 38);

    let default = compile(&default_profile()).unwrap();
    let mount = || {
        // SAFETY: a mount with null arguments never gets past the filter.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount,
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                0,
                std::ptr::null::<u8>(),
            )
        };
        let mount_errno = last_errno();
        // SAFETY: getppid has no arguments.
        let ok = unsafe { libc::getppid() } > 0;
        if r == -1 && mount_errno == libc::EPERM && ok {
            0
        } else {
            1
        }
    };
    assert_eq!(in_child(&default, mount), 0);
}
