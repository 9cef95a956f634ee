//! Where a container process runs and takes its memory from (runtime-spec 1.3):
//! `linux.memoryPolicy` (set_mempolicy(2), for init and every exec'd process, as the
//! personality is) and `process.execCPUAffinity` (for `tug exec` only: the spec says it does
//! not apply to the container's init). Both use the kernel's list format, `0-3,7`.

use oci_spec::runtime::{
    ExecCPUAffinity, LinuxMemoryPolicy, MemoryPolicyFlagType, MemoryPolicyModeType,
};

/// The largest node number + 1 set_mempolicy can take (the kernel's MAX_NUMNODES is at most
/// 1 << 10).
const MAX_NODES: u32 = 1 << 10;

/// Parses a list like `0-3,7` into its numbers, each below `limit`.
pub fn parse_list(text: &str, limit: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let number = |s: &str| -> Result<u32, String> {
            let n: u32 = s
                .trim()
                .parse()
                .map_err(|_| format!("\"{text}\": \"{s}\" is not a number"))?;
            if n >= limit {
                return Err(format!(
                    "\"{text}\": {n} is above the largest, {}",
                    limit - 1
                ));
            }
            Ok(n)
        };
        match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (number(lo)?, number(hi)?);
                if lo > hi {
                    return Err(format!("\"{text}\": the range {lo}-{hi} runs backwards"));
                }
                out.extend(lo..=hi);
            }
            None => out.push(number(item)?),
        }
    }
    Ok(out)
}

/// Checks `linux.memoryPolicy` before anything is made: the nodes a mode needs or refuses,
/// and flags that exclude each other. What the host's nodes allow, the kernel decides (and
/// create reports it by field).
pub fn check_memory_policy(p: &LinuxMemoryPolicy) -> Result<(), (String, String)> {
    use MemoryPolicyModeType as M;
    let field = |f: &str| format!("linux.memoryPolicy.{f}");
    let nodes = p.nodes().as_deref().unwrap_or("");
    if !nodes.is_empty() {
        parse_list(nodes, MAX_NODES).map_err(|m| (field("nodes"), m))?;
    }
    let mode = p.mode();
    match mode {
        M::MpolDefault | M::MpolLocal => {
            if !nodes.is_empty() {
                return Err((field("nodes"), format!("must be empty with {mode}")));
            }
            if p.flags().as_ref().is_some_and(|f| !f.is_empty()) {
                return Err((field("flags"), format!("must be empty with {mode}")));
            }
        }
        M::MpolBind | M::MpolInterleave | M::MpolWeightedInterleave | M::MpolPreferredMany => {
            if nodes.is_empty() {
                return Err((field("nodes"), format!("{mode} needs at least one node")));
            }
        }
        // Without nodes: the node the process runs on.
        M::MpolPreferred => {}
    }
    let flags = p.flags().as_deref().unwrap_or(&[]);
    if flags.contains(&MemoryPolicyFlagType::MpolFStaticNodes)
        && flags.contains(&MemoryPolicyFlagType::MpolFRelativeNodes)
    {
        return Err((
            field("flags"),
            "MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES exclude each other".into(),
        ));
    }
    Ok(())
}

/// The kernel's numbers for a mode (include/uapi/linux/mempolicy.h).
fn mode_number(mode: MemoryPolicyModeType) -> libc::c_int {
    use MemoryPolicyModeType as M;
    match mode {
        M::MpolDefault => 0,
        M::MpolPreferred => 1,
        M::MpolBind => 2,
        M::MpolInterleave => 3,
        M::MpolLocal => 4,
        M::MpolPreferredMany => 5,
        M::MpolWeightedInterleave => 6,
    }
}

fn flag_number(flag: MemoryPolicyFlagType) -> libc::c_int {
    match flag {
        MemoryPolicyFlagType::MpolFNumaBalancing => 1 << 13,
        MemoryPolicyFlagType::MpolFRelativeNodes => 1 << 14,
        MemoryPolicyFlagType::MpolFStaticNodes => 1 << 15,
    }
}

/// Sets the calling process's memory policy; it holds across execve and fork.
pub fn apply_memory_policy(p: &LinuxMemoryPolicy) -> Result<(), String> {
    let nodes = p.nodes().as_deref().unwrap_or("");
    let list = if nodes.is_empty() {
        Vec::new()
    } else {
        parse_list(nodes, MAX_NODES).map_err(|m| format!("linux.memoryPolicy.nodes: {m}"))?
    };
    let mut mask = vec![0u64; (MAX_NODES / 64) as usize];
    for n in &list {
        mask[(n / 64) as usize] |= 1 << (n % 64);
    }
    let mode = p
        .flags()
        .iter()
        .flatten()
        .fold(mode_number(p.mode()), |m, f| m | flag_number(*f));
    let (ptr, maxnode) = if list.is_empty() {
        (std::ptr::null(), 0)
    } else {
        // The kernel reads maxnode - 1 bits (an off-by-one kept for its ABI).
        (mask.as_ptr(), mask.len() as libc::c_ulong * 64 + 1)
    };
    // SAFETY: set_mempolicy reads at most maxnode - 1 bits from mask, which has them.
    let r = unsafe { libc::syscall(libc::SYS_set_mempolicy, mode, ptr, maxnode) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::ENOSYS) => " (this kernel has no NUMA support)".to_string(),
            Some(libc::EINVAL) if !nodes.is_empty() => format!(
                " (nodes this host has: {})",
                std::fs::read_to_string("/sys/devices/system/node/online")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into())
            ),
            _ => String::new(),
        };
        let flags: Vec<String> = p.flags().iter().flatten().map(|f| f.to_string()).collect();
        return Err(format!(
            "linux.memoryPolicy: set_mempolicy({}{}{}, nodes \"{nodes}\"): {e}{why}",
            p.mode(),
            if flags.is_empty() { "" } else { "|" },
            flags.join("|")
        ));
    }
    Ok(())
}

/// The CPU numbers a `process.execCPUAffinity` list names, as a CpuSet.
fn cpu_set(text: &str, field: &str) -> Result<nix::sched::CpuSet, (String, String)> {
    let limit = nix::sched::CpuSet::count() as u32;
    let cpus = parse_list(text, limit).map_err(|m| (field.to_string(), m))?;
    let mut set = nix::sched::CpuSet::new();
    for c in cpus {
        set.set(c as usize)
            .map_err(|e| (field.to_string(), format!("CPU {c}: {e}")))?;
    }
    Ok(set)
}

/// Checks `process.execCPUAffinity`'s lists (the format is checked when config.json is read).
pub fn check_exec_cpu_affinity(a: &ExecCPUAffinity) -> Result<(), (String, String)> {
    for (field, list) in affinity_lists(a) {
        cpu_set(list, &field)?;
    }
    Ok(())
}

fn affinity_lists(a: &ExecCPUAffinity) -> Vec<(String, &str)> {
    [
        ("process.execCPUAffinity.initial", a.initial()),
        ("process.execCPUAffinity.final", a.cpu_affinity_final()),
    ]
    .into_iter()
    .filter_map(|(f, l)| Some((f.to_string(), l.as_deref().filter(|l| !l.is_empty())?)))
    .collect()
}

/// Which of the two lists: before the process joins the container's cgroup, or after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityStage {
    Initial,
    Final,
}

/// Sets the calling process's CPU affinity to the `stage` list of `a`, if it has one.
pub fn apply_exec_cpu_affinity(a: &ExecCPUAffinity, stage: AffinityStage) -> Result<(), String> {
    let list = match stage {
        AffinityStage::Initial => a.initial(),
        AffinityStage::Final => a.cpu_affinity_final(),
    };
    let Some(list) = list.as_deref().filter(|l| !l.is_empty()) else {
        return Ok(());
    };
    let field = match stage {
        AffinityStage::Initial => "process.execCPUAffinity.initial",
        AffinityStage::Final => "process.execCPUAffinity.final",
    };
    let set = cpu_set(list, field).map_err(|(f, m)| format!("{f}: {m}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(|e| {
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        format!("{field} \"{list}\": {e} (CPUs online here: {online}; the container's cpuset may allow fewer)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(v: serde_json::Value) -> LinuxMemoryPolicy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_list("0-3,7", 64).unwrap(), vec![0, 1, 2, 3, 7]);
        assert_eq!(parse_list("5", 64).unwrap(), vec![5]);
        assert!(parse_list("3-1", 64).unwrap_err().contains("backwards"));
        assert!(parse_list("64", 64)
            .unwrap_err()
            .contains("above the largest, 63"));
        assert!(parse_list("1,,2", 64).unwrap_err().contains("not a number"));
    }

    #[test]
    fn memory_policy_modes_need_or_refuse_nodes() {
        let check = |v| check_memory_policy(&policy(v)).map_err(|(f, m)| format!("{f}: {m}"));
        assert!(check(serde_json::json!({"mode": "MPOL_BIND", "nodes": "0-1"})).is_ok());
        assert!(check(serde_json::json!({"mode": "MPOL_PREFERRED"})).is_ok());
        assert!(check(serde_json::json!({"mode": "MPOL_BIND"}))
            .unwrap_err()
            .starts_with("linux.memoryPolicy.nodes: MPOL_BIND needs"));
        assert!(
            check(serde_json::json!({"mode": "MPOL_DEFAULT", "nodes": "0"}))
                .unwrap_err()
                .starts_with("linux.memoryPolicy.nodes: must be empty")
        );
        assert!(
            check(serde_json::json!({"mode": "MPOL_LOCAL", "flags": ["MPOL_F_STATIC_NODES"]}))
                .unwrap_err()
                .starts_with("linux.memoryPolicy.flags")
        );
        assert!(
            check(serde_json::json!({"mode": "MPOL_INTERLEAVE", "nodes": "2-1"}))
                .unwrap_err()
                .contains("backwards")
        );
        assert!(
            check(serde_json::json!({"mode": "MPOL_INTERLEAVE", "nodes": "0",
            "flags": ["MPOL_F_STATIC_NODES", "MPOL_F_RELATIVE_NODES"]}))
            .unwrap_err()
            .contains("exclude each other")
        );
    }

    #[test]
    fn exec_cpu_affinity_lists_are_checked_by_field() {
        let a: ExecCPUAffinity =
            serde_json::from_value(serde_json::json!({"initial": "0", "final": "3-1"})).unwrap();
        let (field, message) = check_exec_cpu_affinity(&a).unwrap_err();
        assert_eq!(field, "process.execCPUAffinity.final");
        assert!(message.contains("backwards"), "{message}");
    }
}
