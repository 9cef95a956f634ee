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

/// Refuses, naming the field, what this host cannot give (checked before anything is made).
pub fn check(process: &Process) -> Result<(), (String, String)> {
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
    fn an_lsm_the_host_lacks_is_refused() {
        let p = process(serde_json::json!({"apparmorProfile": "tug-default"}));
        assert_eq!(check(&p).is_err(), !host_has_apparmor());
        let p = process(serde_json::json!({"selinuxLabel": "system_u:system_r:container_t:s0"}));
        assert_eq!(check(&p).is_err(), !host_has_selinux());
    }
}
