//! Device rules on cgroup v2, which has no devices controller: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup decides each device
//! access (open, mknod) from the OCI rules, as runc's and crun's device filters do.
//!
//! The program is a straight list of rule blocks. OCI rules are applied in order, a later
//! rule overriding an earlier one, so the blocks are emitted last rule first and the first
//! block that matches returns its verdict; no match denies.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// One eBPF instruction, as the kernel lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes used here (linux/bpf.h, linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_AND_K: u8 = 0x54; // dst &= imm
const ALU32_RSH_K: u8 = 0x74; // dst >>= imm
const ALU32_MOV_X: u8 = 0xbc; // dst = src
const JNE_K: u8 = 0x55; // if dst != imm goto +off
const JNE_X: u8 = 0x5d; // if dst != src goto +off
const MOV64_K: u8 = 0xb7; // dst = imm
const EXIT: u8 = 0x95;

// bpf_cgroup_dev_ctx: u32 access_type (access << 16 | type), u32 major, u32 minor.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// Compiles device rules (in OCI order) into the program's instructions.
pub fn program(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut out = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let mut checks: Vec<Insn> = Vec::new();
        match rule.typ() {
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => {
                checks.push(insn(JNE_K, 2, 0, 0, DEV_CHAR))
            }
            Some(LinuxDeviceType::B) => checks.push(insn(JNE_K, 2, 0, 0, DEV_BLOCK)),
            // "a" (or none) matches every type; "p" (fifo) is never asked about.
            Some(LinuxDeviceType::P) => continue,
            _ => {}
        }
        let access = access_bits(rule.access().as_deref().unwrap_or("rwm"));
        if access != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // The rule covers the request only if every requested bit is in the rule.
            checks.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            checks.push(insn(ALU32_AND_K, 1, 0, 0, access));
            checks.push(insn(JNE_X, 1, 3, 0, 0));
        }
        if let Some(major) = rule.major().filter(|m| *m >= 0) {
            checks.push(insn(JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor().filter(|m| *m >= 0) {
            checks.push(insn(JNE_K, 5, 0, 0, minor as i32));
        }
        // Each failed check jumps past the rest of the block (the verdict is 2 insns).
        let n = checks.len();
        let catch_all = n == 0;
        for (i, c) in checks.iter_mut().enumerate() {
            if matches!(c.code, JNE_K | JNE_X) {
                c.off = (n - i - 1 + 2) as i16;
            }
        }
        out.extend(checks);
        out.push(insn(MOV64_K, 0, 0, 0, i32::from(rule.allow())));
        out.push(insn(EXIT, 0, 0, 0, 0));
        if catch_all {
            // Nothing after a rule that matches everything can run (the verifier refuses
            // unreachable code), and earlier rules are overridden by it anyway.
            return out;
        }
    }
    out.push(insn(MOV64_K, 0, 0, 0, 0));
    out.push(insn(EXIT, 0, 0, 0, 0));
    out
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |acc, c| {
        acc | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_F_REPLACE: u32 = 4;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// BPF_PROG_ATTACH and BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// BPF_PROG_QUERY (the padding spelled out: the kernel wants unused bytes zero).
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

/// BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The bpf syscall; the kernel may write back into `attr` (BPF_PROG_QUERY does).
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the bpf syscall with a properly laid out attr of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The device programs attached to the cgroup directory `dir` itself (not inherited ones).
fn attached_programs(dir: &std::fs::File) -> io::Result<Vec<OwnedFd>> {
    // A cgroup holds at most 64 programs per attach type.
    let mut ids = [0u32; 64];
    let mut query = ProgQueryAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut query)
        .map_err(|e| with_context(e, "query attached device filters"))?;
    let count = (query.prog_cnt as usize).min(ids.len());
    ids[..count]
        .iter()
        .map(|&id| {
            let mut attr = GetFdByIdAttr {
                prog_id: id,
                ..Default::default()
            };
            let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)
                .map_err(|e| with_context(e, &format!("open attached device filter {id}")))?;
            // SAFETY: the kernel returned a new fd that we now own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        })
        .collect()
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Loads the program for `rules` and makes it the cgroup v2 directory `cgroup_dir`'s only
/// device program. The attachment holds the program; it goes with the cgroup.
///
/// Programs attached with BPF_F_ALLOW_MULTI all run and every one must allow, so a second
/// program next to the first could only take permissions away: an `update` replaces the
/// program it finds (BPF_F_REPLACE, Linux 5.6), or attaches the new one and then detaches the
/// old ones, as runc does. Between the two steps of the fallback both programs hold, so no
/// access the old or the new rules deny is let through.
pub fn attach(cgroup_dir: &std::path::Path, rules: &[LinuxDeviceCgroup]) -> io::Result<()> {
    let dir = std::fs::File::open(cgroup_dir)?;
    let old = attached_programs(&dir)?;
    let prog = load(rules)?;
    let attach = |flags: u32, replace: Option<&OwnedFd>| {
        let mut attr = ProgAttachAttr {
            target_fd: dir.as_raw_fd() as u32,
            attach_bpf_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: flags,
            replace_bpf_fd: replace.map_or(0, |p| p.as_raw_fd() as u32),
        };
        bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| {
            with_context(
                e,
                &format!("attach device filter to {}", cgroup_dir.display()),
            )
        })
    };
    if let [only] = old.as_slice() {
        match attach(BPF_F_ALLOW_MULTI | BPF_F_REPLACE, Some(only)) {
            Ok(_) => return Ok(()),
            // A kernel before 5.6 does not know the flag: attach, then detach.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    attach(BPF_F_ALLOW_MULTI, None)?;
    for p in &old {
        let mut attr = ProgAttachAttr {
            target_fd: dir.as_raw_fd() as u32,
            attach_bpf_fd: p.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        bpf(BPF_PROG_DETACH, &mut attr).map_err(|e| {
            with_context(
                e,
                &format!(
                    "detach the old device filter from {} (the new one is attached; both apply)",
                    cgroup_dir.display()
                ),
            )
        })?;
    }
    Ok(())
}

/// Loads the program for `rules`; a verifier's refusal comes with its last words.
fn load(rules: &[LinuxDeviceCgroup]) -> io::Result<OwnedFd> {
    let insns = program(rules);
    let license = b"Apache-2.0\0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"tug_device");
    let load = |log: Option<&mut Vec<u8>>| {
        let (level, size, buf) = match log {
            Some(l) => (1, l.len() as u32, l.as_mut_ptr() as u64),
            None => (0, 0, 0),
        };
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: level,
            log_size: size,
            log_buf: buf,
            prog_name: name,
            ..Default::default()
        };
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    match load(None) {
        // SAFETY: the kernel returned a new fd that we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            // Load again with the verifier's log, for its last words.
            let mut log = vec![0u8; 1 << 20];
            let _ = load(Some(&mut log));
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            Err(io::Error::new(
                e.kind(),
                format!("load device filter: {e}: {}", tail.join(" / ")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        typ: &str,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        serde_json::from_value(serde_json::json!({
            "allow": allow, "type": typ, "major": major, "minor": minor, "access": access
        }))
        .unwrap()
    }

    /// Runs the program on one request, as the kernel would.
    fn verdict(prog: &[Insn], typ: i32, access: i32, major: i32, minor: i32) -> i64 {
        let ctx = [((access << 16) | typ) as u32, major as u32, minor as u32];
        let mut r = [0i64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = i64::from(ctx[(i.off / 4) as usize]),
                ALU32_AND_K => r[dst] = ((r[dst] as u32) & (i.imm as u32)) as i64,
                ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as i64,
                ALU32_MOV_X => r[dst] = (r[src] as u32) as i64,
                JNE_K if r[dst] != i64::from(i.imm) => pc += i.off as usize,
                JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JNE_K | JNE_X => {}
                MOV64_K => r[dst] = i64::from(i.imm),
                EXIT => return r[0],
                c => panic!("unknown opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn later_rules_override_earlier_ones_and_no_match_denies() {
        let rules = vec![
            rule(false, "a", None, None, "rwm"),
            rule(true, "c", Some(1), Some(3), "rwm"),
            rule(true, "c", None, None, "m"),
            rule(true, "c", Some(136), None, "rw"),
            rule(false, "c", Some(1), Some(3), "w"),
        ];
        let p = program(&rules);
        // /dev/null readable, but its write was taken away by the last rule.
        assert_eq!(verdict(&p, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(verdict(&p, DEV_CHAR, ACC_WRITE, 1, 3), 0);
        // /dev/zero: only mknod, from the any-char rule.
        assert_eq!(verdict(&p, DEV_CHAR, ACC_READ, 1, 5), 0);
        assert_eq!(verdict(&p, DEV_CHAR, ACC_MKNOD, 1, 5), 1);
        // ptys: any minor, read and write; mknod from the any-char rule.
        assert_eq!(verdict(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 136, 7), 1);
        assert_eq!(verdict(&p, DEV_CHAR, ACC_MKNOD, 136, 7), 1);
        // A rule with "rw" does not cover a request that also asks for mknod.
        let q = program(&[rule(true, "c", Some(136), None, "rw")]);
        assert_eq!(verdict(&q, DEV_CHAR, ACC_READ | ACC_MKNOD, 136, 7), 0);
        // A block device: nothing.
        assert_eq!(verdict(&p, DEV_BLOCK, ACC_READ, 8, 0), 0);
        assert_eq!(verdict(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 0);
        // With no rules at all, everything is denied.
        assert_eq!(verdict(&program(&[]), DEV_CHAR, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn a_config_without_device_rules_gets_deny_all_and_the_defaults() {
        // The list create hands to attach() on v2 (and writes to devices.* on v1).
        let p = program(&crate::cgroups::device_rules(&[]));
        // /dev/null, /dev/zero, /dev/tty, /dev/ptmx and the ptys work.
        for (major, minor) in [(1, 3), (1, 5), (1, 9), (5, 0), (5, 2), (136, 4)] {
            assert_eq!(
                verdict(&p, DEV_CHAR, ACC_READ | ACC_WRITE, major, minor),
                1,
                "{major}:{minor}"
            );
        }
        // A device node for /dev/kvm or /dev/fuse in the rootfs cannot be opened.
        assert_eq!(verdict(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 10, 232), 0);
        assert_eq!(verdict(&p, DEV_CHAR, ACC_READ, 10, 229), 0);
        assert_eq!(verdict(&p, DEV_BLOCK, ACC_READ, 8, 0), 0);
        // mknod stays allowed, as in runc; opening is what the rules guard.
        assert_eq!(verdict(&p, DEV_CHAR, ACC_MKNOD, 10, 232), 1);
    }
}
