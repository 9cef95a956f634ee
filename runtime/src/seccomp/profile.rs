//! The default profile `tug spec` writes: a deny-list for an unprivileged container.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};

/// Syscalls that reach the kernel's keyrings, modules, mounts, tracing of other processes,
/// clocks, swap, reboot and kexec, BPF and perf: EPERM, as engines' default profiles answer
/// a container without the capability they need.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "init_module",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "userfaultfd",
    "vhangup",
];

/// The same for syscalls only x86 has (64-bit, or its 32-bit compat arch).
#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[&str] = &[
    "_sysctl",
    "create_module",
    "get_kernel_syms",
    "ioperm",
    "iopl",
    "query_module",
    "stime",
    "umount",
    "uselib",
    "vm86",
    "vm86old",
];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_ARCH: &[&str] = &[];

#[cfg(target_arch = "aarch64")]
const ARCHES: [Arch; 2] = [Arch::ScmpArchAarch64, Arch::ScmpArchArm];
#[cfg(not(target_arch = "aarch64"))]
const ARCHES: [Arch; 2] = [Arch::ScmpArchX86_64, Arch::ScmpArchX86];

fn syscall(names: &[&str], action: LinuxSeccompAction, errno: Option<u32>) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s.set_errno_ret(errno);
    s
}

/// A default profile of the kind container engines ship, as a deny-list: everything is
/// allowed except the syscalls above (EPERM) and making a user namespace (clone or unshare
/// with CLONE_NEWUSER: EPERM). clone3 answers ENOSYS, since its flags sit behind a pointer
/// the filter cannot read, so that libc falls back to clone. It covers the host's arch and
/// its 32-bit compat arch; x32 and other arches are killed.
pub fn default_profile() -> LinuxSeccomp {
    let eperm = Some(libc::EPERM as u32);
    let names: Vec<&str> = DENIED.iter().chain(DENIED_ARCH).copied().collect();
    let new_user = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(libc::CLONE_NEWUSER as u64)
        .value_two(libc::CLONE_NEWUSER as u64)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .expect("every field of the argument is set");
    let mut userns = syscall(
        &["clone", "unshare"],
        LinuxSeccompAction::ScmpActErrno,
        eperm,
    );
    userns.set_args(Some(vec![new_user]));

    let mut p = LinuxSeccomp::default();
    p.set_default_action(LinuxSeccompAction::ScmpActAllow);
    p.set_architectures(Some(ARCHES.to_vec()));
    p.set_syscalls(Some(vec![
        syscall(&names, LinuxSeccompAction::ScmpActErrno, eperm),
        userns,
        syscall(
            &["clone3"],
            LinuxSeccompAction::ScmpActErrno,
            Some(libc::ENOSYS as u32),
        ),
    ]));
    p
}
