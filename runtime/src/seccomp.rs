//! seccomp: compiles config.json's `linux.seccomp` into a BPF program, and installs it.
//!
//! [`compile`] runs in the parent during `create`, before anything is made, so a bad profile
//! fails with the field it concerns and leaves nothing behind. [`install`] runs in init just
//! before `execve` and is a single syscall on the compiled program: it does not allocate.
//!
//! The generator is tug's own (in `bpf`): a filter has one section per arch it can see, each
//! dispatching on the syscall number to that syscall's rules, tried in the profile's order,
//! with the syscall's unconditional action (or the default) after them, as in libseccomp. Crates
//! such as seccompiler build filters with one match action each, which cannot hold a profile
//! that mixes ERRNO values, ALLOW and LOG rules.
//!
//! Choices, where runc (through libseccomp) and the OCI spec leave room:
//! - Arches: the host's own arch always has a section; its 32-bit compat arch (x86 on x86_64,
//!   arm on aarch64) gets one when `architectures` lists it. Any other arch, and x32 syscalls on
//!   x86_64, get SECCOMP_RET_KILL_PROCESS. Listed arches the host cannot run are ignored.
//! - Syscall names: a name tug does not know for any listed arch is an error naming
//!   `linux.seccomp.syscalls[i].names[j]` when the default action lets syscalls through
//!   (ALLOW, LOG): a misspelt deny rule must not silently allow. It is skipped when the
//!   profile lists an arch tug has no table for (the name may be that arch's), and when the
//!   default denies: engines' allow-lists (podman's, docker's) name other arches' syscalls
//!   (pciconfig_iobase, ...) and ones newer than tug's table, and such a syscall stays denied.
//! - Several conditions on the same argument make one rule per condition (any may match), as
//!   runc does; otherwise a rule's conditions must all hold.
//! - A syscall given two unconditional actions (podman's profile allows setns in its list and
//!   denies it again for a container without CAP_SYS_ADMIN) gets the stricter, in the kernel's
//!   order (KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, TRACE, LOG, ALLOW); of two of one kind,
//!   the first.
//! - errnoRet is taken with SCMP_ACT_ERRNO and SCMP_ACT_TRACE (EPERM when absent) and refused
//!   with other actions.
//! - SCMP_ACT_NOTIFY ([`notify`]) needs `listenerPath`; it is refused as the default action and
//!   for `sendmsg`, the call that hands the listener to the agent (the agent could not answer
//!   it: it has no fd yet). A listenerPath without a NOTIFY rule is not used (the spec: no
//!   state is sent then).
//! - Actions and flags the running kernel does not offer are refused at compile time
//!   (SECCOMP_GET_ACTION_AVAIL, and the EFAULT probe libseccomp uses for flags).

mod bpf;
pub mod notify;
mod profile;

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

pub use profile::default_profile;

use bpf::{Cond, Op, Width};

/// What is wrong with a seccomp profile, or why it could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("{field}: unknown syscall \"{name}\" (not a syscall on {arches}): not skipped, since the default action would let through what this rule denies")]
    UnknownSyscall {
        field: String,
        name: String,
        arches: String,
    },
    #[error("{field}: {what} is not supported by tug: {why}")]
    Unsupported {
        field: String,
        what: String,
        why: &'static str,
    },
    #[error("{field}: {what} is not offered by this kernel")]
    Unavailable { field: String, what: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error(
        "linux.seccomp: the filter needs {len} BPF instructions; the kernel takes at most {max}"
    )]
    TooLong { len: usize, max: usize },
    #[error("installing the seccomp filter: {error}{hint}")]
    Install {
        error: std::io::Error,
        hint: &'static str,
    },
}

impl SeccompError {
    /// The config.json field the error concerns.
    pub fn field(&self) -> &str {
        match self {
            SeccompError::UnknownSyscall { field, .. }
            | SeccompError::Unsupported { field, .. }
            | SeccompError::Unavailable { field, .. }
            | SeccompError::Invalid { field, .. } => field,
            SeccompError::TooLong { .. } | SeccompError::Install { .. } => "linux.seccomp",
        }
    }
}

/// A compiled filter, ready for [`install`].
#[derive(Clone)]
pub struct Program {
    insns: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl Program {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// SECCOMP_FILTER_FLAG_* bits passed to seccomp(2).
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("instructions", &self.insns.len())
            .field("flags", &self.flags)
            .finish()
    }
}

/// SECCOMP_FILTER_FLAG_NEW_LISTENER: seccomp(2) returns the notification fd.
const FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
/// SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19): only with a listener.
const FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;

impl Program {
    /// Whether the filter has SCMP_ACT_NOTIFY rules: [`install`] then returns a listener.
    pub fn notifies(&self) -> bool {
        self.flags & FLAG_NEW_LISTENER != 0
    }
}

/// Installs `p` on the calling thread (and, with SECCOMP_FILTER_FLAG_TSYNC, its siblings);
/// returns the listener of a filter that [`Program::notifies`].
///
/// Needs no_new_privs or CAP_SYS_ADMIN. Makes one syscall and allocates nothing, so it is safe
/// in init right before execve.
pub fn install(p: &Program) -> Result<Option<std::os::fd::OwnedFd>, SeccompError> {
    let prog = libc::sock_fprog {
        len: p.insns.len() as libc::c_ushort,
        filter: p.insns.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at `p.insns`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            p.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if r >= 0 {
        if !p.notifies() {
            return Ok(None);
        }
        // SAFETY: with FLAG_NEW_LISTENER the kernel returns a new fd that we now own.
        return Ok(Some(unsafe {
            std::os::fd::FromRawFd::from_raw_fd(r as i32)
        }));
    }
    let error = std::io::Error::last_os_error();
    let hint = match error.raw_os_error() {
        Some(libc::EACCES) => " (a filter needs process.noNewPrivileges or CAP_SYS_ADMIN)",
        _ => "",
    };
    Err(SeccompError::Install { error, hint })
}

/// Compiles a whole OCI seccomp object for this host. See the module docs for the choices.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let native = ArchTable::NATIVE.ok_or_else(|| SeccompError::Unsupported {
        field: "linux.seccomp".into(),
        what: "seccomp".into(),
        why: "tug knows syscall numbers only for x86_64 and aarch64 hosts",
    })?;
    check_listener(seccomp)?;
    if seccomp.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(SeccompError::Invalid {
            field: "linux.seccomp.defaultAction".into(),
            message: "SCMP_ACT_NOTIFY cannot be the default: it would hold the sendmsg that \
                      hands the listener to the agent"
                .into(),
        });
    }
    let mut used = Vec::new();
    let default = action_value(
        seccomp.default_action(),
        seccomp.default_errno_ret(),
        "linux.seccomp.defaultErrnoRet",
    )?;
    used.push((default, "linux.seccomp.defaultAction".to_string()));
    let flags = filter_flags(seccomp)?;
    let default_denies = !matches!(
        seccomp.default_action(),
        LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog
    );

    // The arches the profile lists: which get a section, and whether unknown names may be
    // another arch's.
    let mut sections = vec![native];
    let mut tables = vec![native];
    let mut untabled = false;
    for a in seccomp.architectures().iter().flatten() {
        match ArchTable::of(*a) {
            Some(t) if Some(t) == ArchTable::COMPAT && !sections.contains(&t) => {
                sections.push(t);
                tables.push(t);
            }
            Some(t) if !tables.contains(&t) => tables.push(t),
            Some(_) => {}
            None => untabled |= *a != Arch::ScmpArchX32,
        }
    }

    // Per section, per syscall number: conditional rules in order, then the unconditional
    // action with the field that set it.
    type Entry = (Vec<bpf::Rule>, Option<u32>);
    let mut entries: Vec<BTreeMap<u32, Entry>> = vec![BTreeMap::new(); sections.len()];
    for (i, sc) in seccomp.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let action = action_value(sc.action(), sc.errno_ret(), &format!("{field}.errnoRet"))?;
        if !used.iter().any(|(a, _)| same_kind(*a, action)) {
            used.push((action, format!("{field}.action")));
        }
        let rules = rule_conditions(sc.args().as_deref().unwrap_or_default(), &field)?;
        // Skipping a name tug cannot resolve leaves that call to the default action: harmless
        // unless the rule denies what the default lets through.
        let skip_widens = !default_denies
            && !matches!(
                sc.action(),
                LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog
            );
        for (j, name) in sc.names().iter().enumerate() {
            if sc.action() == LinuxSeccompAction::ScmpActNotify && name == "sendmsg" {
                return Err(SeccompError::Invalid {
                    field: format!("{field}.names[{j}]"),
                    message: "SCMP_ACT_NOTIFY cannot hold sendmsg: tug hands the listener to \
                              the agent with it"
                        .into(),
                });
            }
            let mut known = false;
            for (s, arch) in sections.iter().enumerate() {
                let Some(nr) = arch.lookup(name) else {
                    continue;
                };
                known = true;
                let entry = entries[s].entry(nr).or_default();
                if rules.is_empty() {
                    entry.1 = Some(match entry.1 {
                        Some(earlier) if precedence(earlier) <= precedence(action) => earlier,
                        _ => action,
                    });
                } else {
                    entry.0.extend(rules.iter().map(|conds| bpf::Rule {
                        conds: conds.clone(),
                        action,
                    }));
                }
            }
            known |= tables.iter().any(|t| t.lookup(name).is_some());
            if !known && !untabled && skip_widens {
                return Err(SeccompError::UnknownSyscall {
                    field: format!("{field}.names[{j}]"),
                    name: name.clone(),
                    arches: tables
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            if !known {
                tracing::warn!("{field}.names[{j}]: skipping unknown syscall {name}");
            }
        }
    }

    let filter = bpf::Filter {
        sections: sections
            .iter()
            .zip(entries)
            .map(|(arch, entries)| bpf::Section {
                audit_arch: arch.audit(),
                width: arch.width(),
                reject_x32: *arch == ArchTable::X86_64,
                syscalls: entries
                    .into_iter()
                    .filter_map(|(nr, (rules, uncond))| {
                        let fallback = uncond.unwrap_or(default);
                        let rules: Vec<bpf::Rule> =
                            rules.into_iter().filter(|r| r.action != fallback).collect();
                        (!rules.is_empty() || fallback != default).then_some(bpf::Syscall {
                            nr,
                            rules,
                            fallback,
                        })
                    })
                    .collect(),
                default,
            })
            .collect(),
        bad_arch: libc::SECCOMP_RET_KILL_PROCESS,
    };
    let mut flags = flags;
    match used
        .iter()
        .find(|(a, _)| same_kind(*a, libc::SECCOMP_RET_USER_NOTIF))
    {
        Some((_, field)) if seccomp.listener_path().is_none() => {
            return Err(SeccompError::Invalid {
                field: "linux.seccomp.listenerPath".into(),
                message: format!(
                    "is needed: {field} is SCMP_ACT_NOTIFY, whose listener goes to a seccomp agent"
                ),
            })
        }
        Some(_) => flags |= FLAG_NEW_LISTENER,
        None if flags & FLAG_WAIT_KILLABLE_RECV != 0 => {
            return Err(SeccompError::Invalid {
                field: "linux.seccomp.flags".into(),
                message: "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV applies to a listener only: \
                          no rule is SCMP_ACT_NOTIFY"
                    .into(),
            })
        }
        None => {}
    }
    let insns = bpf::generate(&filter);
    let max = libc::BPF_MAXINSNS as usize;
    if insns.len() > max {
        return Err(SeccompError::TooLong {
            len: insns.len(),
            max,
        });
    }
    for (action, field) in used {
        if !action_available(action) {
            return Err(SeccompError::Unavailable {
                field,
                what: format!(
                    "the return action {:#x}",
                    action & libc::SECCOMP_RET_ACTION_FULL
                ),
            });
        }
    }
    Ok(Program { insns, flags })
}

/// The `linux.seccomp` object of `tug features` (runc's format): what [`compile`] takes, and
/// the filter flags this kernel accepts.
pub fn features() -> serde_json::Value {
    let archs: Vec<&str> = [ArchTable::NATIVE, ArchTable::COMPAT]
        .into_iter()
        .flatten()
        .map(ArchTable::name)
        .collect();
    let flags = [
        ("SECCOMP_FILTER_FLAG_TSYNC", libc::SECCOMP_FILTER_FLAG_TSYNC),
        ("SECCOMP_FILTER_FLAG_LOG", libc::SECCOMP_FILTER_FLAG_LOG),
        (
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
            libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
        ),
        (
            "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
            FLAG_WAIT_KILLABLE_RECV | FLAG_NEW_LISTENER,
        ),
    ];
    let supported: Vec<&str> = flags
        .iter()
        .filter(|(_, bit)| flag_available(*bit))
        .map(|(name, _)| *name)
        .collect();
    serde_json::json!({
        "enabled": ArchTable::NATIVE.is_some(),
        "actions": [
            "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
            "SCMP_ACT_TRAP"
        ],
        "operators": [
            "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
            "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
        ],
        "archs": archs,
        "knownFlags": flags.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        "supportedFlags": supported,
    })
}

/// The return value of an OCI action; `errno_ret` only with ERRNO and TRACE.
fn action_value(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    errno_field: &str,
) -> Result<u32, SeccompError> {
    use LinuxSeccompAction as A;
    let data = |max: u32| -> Result<u32, SeccompError> {
        let v = errno_ret.unwrap_or(libc::EPERM as u32);
        if v > max {
            return Err(SeccompError::Invalid {
                field: errno_field.into(),
                message: format!("{v} is out of range (at most {max})"),
            });
        }
        Ok(v)
    };
    if errno_ret.is_some() && !matches!(action, A::ScmpActErrno | A::ScmpActTrace) {
        return Err(SeccompError::Invalid {
            field: errno_field.into(),
            message: format!("is only taken with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {action}"),
        });
    }
    Ok(match action {
        A::ScmpActKill | A::ScmpActKillThread => libc::SECCOMP_RET_KILL_THREAD,
        A::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        A::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        // The kernel caps an errno at MAX_ERRNO.
        A::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data(4095)?,
        A::ScmpActTrace => libc::SECCOMP_RET_TRACE | data(libc::SECCOMP_RET_DATA)?,
        A::ScmpActLog => libc::SECCOMP_RET_LOG,
        A::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
        A::ScmpActNotify => libc::SECCOMP_RET_USER_NOTIF,
    })
}

/// A rule's argument conditions as alternatives: one list (all must hold), or one list per
/// condition when two conditions test the same argument (runc's rule).
fn rule_conditions(
    args: &[oci_spec::runtime::LinuxSeccompArg],
    field: &str,
) -> Result<Vec<Vec<Cond>>, SeccompError> {
    let mut conds = Vec::with_capacity(args.len());
    for (k, a) in args.iter().enumerate() {
        let index = u8::try_from(a.index())
            .ok()
            .filter(|i| *i < 6)
            .ok_or_else(|| SeccompError::Invalid {
                field: format!("{field}.args[{k}].index"),
                message: format!("{} is not an argument index (0 to 5)", a.index()),
            })?;
        use LinuxSeccompOperator as O;
        let op = match a.op() {
            O::ScmpCmpNe => Op::Ne,
            O::ScmpCmpLt => Op::Lt,
            O::ScmpCmpLe => Op::Le,
            O::ScmpCmpEq => Op::Eq,
            O::ScmpCmpGe => Op::Ge,
            O::ScmpCmpGt => Op::Gt,
            O::ScmpCmpMaskedEq => Op::MaskedEq,
        };
        conds.push(Cond {
            index,
            op,
            value: a.value(),
            value_two: a.value_two().unwrap_or(0),
        });
    }
    if conds.is_empty() {
        return Ok(Vec::new());
    }
    let repeated = (0..6).any(|i| conds.iter().filter(|c| c.index == i).count() > 1);
    Ok(if repeated {
        conds.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conds]
    })
}

fn filter_flags(seccomp: &LinuxSeccomp) -> Result<libc::c_ulong, SeccompError> {
    let mut flags = 0;
    for (i, f) in seccomp.flags().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.flags[{i}]");
        let bit = match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => FLAG_WAIT_KILLABLE_RECV,
        };
        // The kernel takes WAIT_KILLABLE_RECV only with NEW_LISTENER: probe them together.
        let probe = if bit == FLAG_WAIT_KILLABLE_RECV {
            bit | FLAG_NEW_LISTENER
        } else {
            bit
        };
        if !flag_available(probe) {
            return Err(SeccompError::Unavailable {
                field,
                what: f.to_string(),
            });
        }
        flags |= bit;
    }
    Ok(flags)
}

/// `listenerPath` and `listenerMetadata`, whether or not a rule notifies.
fn check_listener(seccomp: &LinuxSeccomp) -> Result<(), SeccompError> {
    let invalid = |field: &str, message: String| SeccompError::Invalid {
        field: field.into(),
        message,
    };
    match seccomp.listener_path() {
        Some(p) if !p.is_absolute() => Err(invalid(
            "linux.seccomp.listenerPath",
            format!("{} must be an absolute path", p.display()),
        )),
        // sockaddr_un's sun_path holds 108 bytes with the NUL.
        Some(p) if p.as_os_str().len() > 107 => Err(invalid(
            "linux.seccomp.listenerPath",
            format!(
                "{} is longer than a unix socket path can be (107 bytes)",
                p.display()
            ),
        )),
        None if seccomp.listener_metadata().is_some() => Err(invalid(
            "linux.seccomp.listenerMetadata",
            "is for the agent on linux.seccomp.listenerPath, which is not set".into(),
        )),
        _ => Ok(()),
    }
}

/// Whether the kernel takes filter flag `bit`: with a null program it fails with EFAULT
/// after accepting the flags, and EINVAL if it does not know them (as libseccomp probes).
fn flag_available(bit: libc::c_ulong) -> bool {
    // SAFETY: a null program is never installed; the kernel only validates the flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            bit,
            std::ptr::null::<libc::sock_fprog>(),
        )
    };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
}

/// The kernel's order of actions, strictest first: when two filters disagree it takes the
/// strictest, and so does tug when a profile gives one syscall two unconditional actions.
fn precedence(value: u32) -> u8 {
    match value & libc::SECCOMP_RET_ACTION_FULL {
        libc::SECCOMP_RET_KILL_PROCESS => 0,
        libc::SECCOMP_RET_KILL_THREAD => 1,
        libc::SECCOMP_RET_TRAP => 2,
        libc::SECCOMP_RET_ERRNO => 3,
        libc::SECCOMP_RET_USER_NOTIF => 4,
        libc::SECCOMP_RET_TRACE => 5,
        libc::SECCOMP_RET_LOG => 6,
        _ => 7,
    }
}

/// Whether two return values are the same action (whatever their errno or trace data).
fn same_kind(a: u32, b: u32) -> bool {
    a & libc::SECCOMP_RET_ACTION_FULL == b & libc::SECCOMP_RET_ACTION_FULL
}

/// Whether the kernel offers return action `value` (SECCOMP_GET_ACTION_AVAIL, Linux 4.14).
fn action_available(value: u32) -> bool {
    let action: u32 = value & libc::SECCOMP_RET_ACTION_FULL;
    // SAFETY: the kernel reads one u32.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    r == 0
}

/// An arch whose syscall names tug can resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The other arch's variants are built but not constructed on a given host.
#[allow(dead_code)]
enum ArchTable {
    X86_64,
    X86,
    Aarch64,
    Arm,
}

impl ArchTable {
    #[cfg(target_arch = "x86_64")]
    const NATIVE: Option<ArchTable> = Some(ArchTable::X86_64);
    #[cfg(target_arch = "x86_64")]
    const COMPAT: Option<ArchTable> = Some(ArchTable::X86);
    #[cfg(target_arch = "aarch64")]
    const NATIVE: Option<ArchTable> = Some(ArchTable::Aarch64);
    #[cfg(target_arch = "aarch64")]
    const COMPAT: Option<ArchTable> = Some(ArchTable::Arm);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const NATIVE: Option<ArchTable> = None;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const COMPAT: Option<ArchTable> = None;

    /// The table of a listed arch. Only the host's native and compat tables are built in
    /// (the others cost 100 KB and no filter section uses them): another listed arch counts
    /// as one without a table, so names unknown here are skipped, not refused.
    fn of(a: Arch) -> Option<ArchTable> {
        match a {
            Arch::ScmpArchNative => ArchTable::NATIVE,
            #[cfg(target_arch = "x86_64")]
            Arch::ScmpArchX86_64 => Some(ArchTable::X86_64),
            #[cfg(target_arch = "x86_64")]
            Arch::ScmpArchX86 => Some(ArchTable::X86),
            #[cfg(target_arch = "aarch64")]
            Arch::ScmpArchAarch64 => Some(ArchTable::Aarch64),
            #[cfg(target_arch = "aarch64")]
            Arch::ScmpArchArm => Some(ArchTable::Arm),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ArchTable::X86_64 => "SCMP_ARCH_X86_64",
            ArchTable::X86 => "SCMP_ARCH_X86",
            ArchTable::Aarch64 => "SCMP_ARCH_AARCH64",
            ArchTable::Arm => "SCMP_ARCH_ARM",
        }
    }

    /// AUDIT_ARCH_* as seccomp_data.arch holds it.
    fn audit(self) -> u32 {
        let a = match self {
            ArchTable::X86_64 => Arch::ScmpArchX86_64,
            ArchTable::X86 => Arch::ScmpArchX86,
            ArchTable::Aarch64 => Arch::ScmpArchAarch64,
            ArchTable::Arm => Arch::ScmpArchArm,
        };
        a as u32
    }

    fn width(self) -> Width {
        match self {
            ArchTable::X86_64 | ArchTable::Aarch64 => Width::W64,
            ArchTable::X86 | ArchTable::Arm => Width::W32,
        }
    }

    fn lookup(self, name: &str) -> Option<u32> {
        use std::str::FromStr;
        let id = match self {
            #[cfg(target_arch = "x86_64")]
            ArchTable::X86_64 => syscalls::x86_64::Sysno::from_str(name).ok()?.id(),
            #[cfg(target_arch = "x86_64")]
            ArchTable::X86 => syscalls::x86::Sysno::from_str(name).ok()?.id(),
            #[cfg(target_arch = "aarch64")]
            ArchTable::Aarch64 => syscalls::aarch64::Sysno::from_str(name).ok()?.id(),
            #[cfg(target_arch = "aarch64")]
            ArchTable::Arm => syscalls::arm::Sysno::from_str(name).ok()?.id(),
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        u32::try_from(id).ok()
    }
}

#[cfg(test)]
mod tests;
