//! Process attributes set right before exec, for init and for exec'd processes alike:
//! personality, I/O priority, CPU scheduler, and the AppArmor profile or SELinux label.

use std::path::Path;

use oci_spec::runtime::{
    IOPriorityClass, Linux, LinuxPersonalityDomain, LinuxSchedulerFlag, LinuxSchedulerPolicy,
    Process,
};

const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
const SELINUX_FS: &str = "/sys/fs/selinux/enforce";

/// Whether the host has AppArmor switched on.
pub fn host_has_apparmor() -> bool {
    std::fs::read_to_string(APPARMOR_ENABLED).is_ok_and(|s| s.trim() == "Y")
}

/// Whether the host has SELinux.
pub fn host_has_selinux() -> bool {
    Path::new(SELINUX_FS).exists()
}

/// The highest uid or gid a container process may have. Above it the kernel's setuid family
/// reads the id as negative, and -1 (4294967295) means "leave unchanged": the process would
/// go on as root.
pub const MAX_ID: u32 = i32::MAX as u32;

/// Refuses a uid or gid above [`MAX_ID`]; `what` names it in the message.
pub fn check_id(id: u32, what: &str) -> Result<(), String> {
    if id > MAX_ID {
        return Err(format!("{what} {id} is outside 0..={MAX_ID}"));
    }
    Ok(())
}

/// Refuses, naming the field, what this host cannot give (checked before anything is made).
pub fn check(process: &Process) -> Result<(), (String, String)> {
    let user = process.user();
    let ids = [
        ("process.user.uid", user.uid()),
        ("process.user.gid", user.gid()),
    ];
    let extra = user.additional_gids().iter().flatten().enumerate();
    let extra = extra.map(|(i, g)| (format!("process.user.additionalGids[{i}]"), *g));
    for (field, id) in ids
        .map(|(f, id)| (f.to_string(), id))
        .into_iter()
        .chain(extra)
    {
        check_id(id, "id").map_err(|m| (field, m))?;
    }
    check_capabilities(process)?;
    if let Some(a) = process.exec_cpu_affinity() {
        crate::placement::check_exec_cpu_affinity(a)?;
    }
    if let Some(p) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        if !host_has_apparmor() {
            return Err((
                "process.apparmorProfile".into(),
                format!("\"{p}\" asked for, but this host has no AppArmor ({APPARMOR_ENABLED})"),
            ));
        }
    }
    if let Some(l) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        if !host_has_selinux() {
            return Err((
                "process.selinuxLabel".into(),
                format!("\"{l}\" asked for, but this host has no SELinux ({SELINUX_FS})"),
            ));
        }
    }
    if let Some(io) = process.io_priority() {
        if !(0..=7).contains(&io.priority()) {
            return Err((
                "process.ioPriority.priority".into(),
                format!("{} is not in 0..7", io.priority()),
            ));
        }
    }
    if let Some(s) = process.scheduler() {
        if let Some(n) = *s.nice() {
            if !(-20..=19).contains(&n) {
                return Err((
                    "process.scheduler.nice".into(),
                    format!("{n} is not in -20..19"),
                ));
            }
        }
        if *s.policy() == LinuxSchedulerPolicy::SchedIso {
            return Err((
                "process.scheduler.policy".into(),
                "SCHED_ISO is not in the Linux kernel".into(),
            ));
        }
    }
    Ok(())
}

/// Refuses capabilities that could not be raised: the effective, permitted and inheritable
/// sets must be within the bounding set (the kernel refuses an inheritable capability outside
/// it, and drops an effective or permitted one at exec). Ambient capabilities outside the
/// inheritable set stay a warning at exec, as in runc, whose default spec asks for them.
fn check_capabilities(process: &Process) -> Result<(), (String, String)> {
    let Some(c) = process.capabilities() else {
        return Ok(());
    };
    let bounding = c.bounding().clone().unwrap_or_default();
    for (name, set) in [
        ("effective", c.effective()),
        ("permitted", c.permitted()),
        ("inheritable", c.inheritable()),
    ] {
        let mut outside: Vec<String> = set
            .iter()
            .flatten()
            .filter(|cap| !bounding.contains(cap))
            .map(|cap| format!("CAP_{cap}"))
            .collect();
        if !outside.is_empty() {
            outside.sort();
            return Err((
                format!("process.capabilities.{name}"),
                format!(
                    "{} not in process.capabilities.bounding, so the process cannot have it",
                    outside.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Sets the execution domain (`linux.personality`).
pub fn apply_personality(linux: Option<&Linux>) -> Result<(), String> {
    let Some(p) = linux.and_then(|l| l.personality().as_ref()) else {
        return Ok(());
    };
    let persona: libc::c_ulong = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0x0000,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    // SAFETY: personality with a plain integer.
    if unsafe { libc::personality(persona) } == -1 {
        return Err(format!(
            "linux.personality: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Sets the I/O scheduling class and priority (`process.ioPriority`).
pub fn apply_io_priority(process: &Process) -> Result<(), String> {
    let Some(io) = process.io_priority() else {
        return Ok(());
    };
    let class: i64 = match io.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    let value = (class << 13) | io.priority();
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    // SAFETY: ioprio_set on this process with integer arguments.
    if unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, value) } != 0 {
        return Err(format!(
            "process.ioPriority: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Sets the CPU scheduling policy and its parameters (`process.scheduler`), with
/// sched_setattr as the runtime spec describes.
pub fn apply_scheduler(process: &Process) -> Result<(), String> {
    let Some(s) = process.scheduler() else {
        return Ok(());
    };
    let policy = match *s.policy() {
        LinuxSchedulerPolicy::SchedOther => 0,
        LinuxSchedulerPolicy::SchedFifo => 1,
        LinuxSchedulerPolicy::SchedRr => 2,
        LinuxSchedulerPolicy::SchedBatch => 3,
        LinuxSchedulerPolicy::SchedIso => 4,
        LinuxSchedulerPolicy::SchedIdle => 5,
        LinuxSchedulerPolicy::SchedDeadline => 6,
    };
    let mut flags = 0u64;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSchedulerFlag::SchedResetOnFork => 0x01,
            LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
            LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
            LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
            LinuxSchedulerFlag::SchedFlagUtilClampMin => 0x20,
            LinuxSchedulerFlag::SchedFlagUtilClampMax => 0x40,
        };
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        flags,
        nice: (*s.nice()).unwrap_or(0),
        priority: (*s.priority()).unwrap_or(0).max(0) as u32,
        runtime: (*s.runtime()).unwrap_or(0),
        deadline: (*s.deadline()).unwrap_or(0),
        period: (*s.period()).unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: sched_setattr on this thread with a sched_attr we own and whose size we give.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } != 0 {
        return Err(format!(
            "process.scheduler ({:?}): {}",
            s.policy(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Asks the LSM to switch to the profile or label at the coming exec.
pub fn apply_lsm(process: &Process) -> Result<(), String> {
    if let Some(p) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let new = Path::new("/proc/self/attr/apparmor/exec");
        let path = if new.exists() {
            new
        } else {
            Path::new("/proc/self/attr/exec")
        };
        std::fs::write(path, format!("exec {p}"))
            .map_err(|e| format!("process.apparmorProfile \"{p}\": {e}"))?;
    }
    if let Some(l) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        std::fs::write("/proc/self/attr/exec", l)
            .map_err(|e| format!("process.selinuxLabel \"{l}\": {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: serde_json::Value) -> Process {
        let mut base = serde_json::to_value(Process::default()).unwrap();
        for (k, v) in json.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let p =
            process(serde_json::json!({"ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 9}}));
        assert_eq!(check(&p).unwrap_err().0, "process.ioPriority.priority");
        let p = process(serde_json::json!({"scheduler": {"policy": "SCHED_OTHER", "nice": 40}}));
        assert_eq!(check(&p).unwrap_err().0, "process.scheduler.nice");
    }

    #[test]
    fn ids_above_i32_max_and_unraisable_capabilities_are_refused() {
        let p = process(serde_json::json!({"user": {"uid": 4294967295u32, "gid": 0}}));
        assert_eq!(check(&p).unwrap_err().0, "process.user.uid");
        let p = process(serde_json::json!({"user": {"uid": 0, "gid": 2147483648u32}}));
        assert_eq!(check(&p).unwrap_err().0, "process.user.gid");
        let p = process(
            serde_json::json!({"user": {"uid": 0, "gid": 0, "additionalGids": [1, 4294967295u32]}}),
        );
        assert_eq!(check(&p).unwrap_err().0, "process.user.additionalGids[1]");
        let p = process(serde_json::json!({"user": {"uid": 2147483647u32, "gid": 2147483647u32}}));
        assert!(check(&p).is_ok());
        let p = process(serde_json::json!({"capabilities": {
            "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
            "inheritable": ["CAP_SYS_ADMIN"]}}));
        let (field, message) = check(&p).unwrap_err();
        assert_eq!(field, "process.capabilities.inheritable");
        assert!(message.contains("CAP_SYS_ADMIN"), "{message}");
    }

    #[test]
    fn an_lsm_the_host_lacks_is_refused() {
        let p = process(serde_json::json!({"apparmorProfile": "tug-default"}));
        assert_eq!(check(&p).is_err(), !host_has_apparmor());
        let p = process(serde_json::json!({"selinuxLabel": "system_u:system_r:container_t:s0"}));
        assert_eq!(check(&p).is_err(), !host_has_selinux());
    }
}
