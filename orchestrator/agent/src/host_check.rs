//! Start-up checks of the host, made before anything is started: a node whose instances
//! could never run says why at once instead of failing every instance forever.

use std::collections::BTreeSet;
use std::path::Path;

/// The controllers an instance's limits need.
pub const NEEDED_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostCheckError {
    #[error(
        "no cgroup hierarchy is mounted under /sys/fs/cgroup in this mount namespace, so no \
         container could get its cgroup (each would fail with `subsystems is empty`). \
         `ip netns exec` does this: it mounts a fresh /sys without the cgroup mounts. Enter \
         a network namespace with `nsenter --net=/run/netns/NAME tugboat ...` instead"
    )]
    CgroupsHidden,
    #[error(
        "the cgroup controllers {missing:?} are not available under /sys/fs/cgroup (found: \
         {found:?}); instance limits need {NEEDED_CONTROLLERS:?}. On cgroup v2, enable them \
         in /sys/fs/cgroup/cgroup.subtree_control; on v1, mount their hierarchies"
    )]
    ControllersMissing {
        missing: Vec<String>,
        found: Vec<String>,
    },
}

/// The cgroup controllers visible under /sys/fs/cgroup, from /proc/self/mountinfo's text:
/// the options of every v1 `cgroup` mount there, and for a `cgroup2` mount on
/// /sys/fs/cgroup itself (a pure v2 host) `v2_controllers` (its cgroup.controllers).
/// None: no cgroup mount at all.
pub fn visible_controllers(
    mountinfo: &str,
    v2_controllers: Option<&str>,
) -> Option<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let mut any = false;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut fields = right.split(' ');
        let (Some(fstype), _, Some(options)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if !(mount_point == "/sys/fs/cgroup" || mount_point.starts_with("/sys/fs/cgroup/")) {
            continue;
        }
        match fstype {
            "cgroup" => {
                any = true;
                found.extend(options.split(',').map(str::to_string));
            }
            "cgroup2" => {
                any = true;
                if mount_point == "/sys/fs/cgroup" {
                    found.extend(
                        v2_controllers
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(str::to_string),
                    );
                }
            }
            _ => {}
        }
    }
    any.then_some(found)
}

/// Whether this process sees the cgroup controllers that instances need.
pub fn check_cgroups_in(
    mountinfo: &str,
    v2_controllers: Option<&str>,
) -> Result<(), HostCheckError> {
    let found =
        visible_controllers(mountinfo, v2_controllers).ok_or(HostCheckError::CgroupsHidden)?;
    let missing: Vec<String> = NEEDED_CONTROLLERS
        .iter()
        .filter(|c| !found.contains(**c))
        .map(|c| c.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let found = found
        .into_iter()
        .filter(|c| {
            !c.contains('=')
                && !["rw", "ro", "nosuid", "nodev", "noexec", "relatime"].contains(&c.as_str())
        })
        .collect();
    Err(HostCheckError::ControllersMissing { missing, found })
}

/// [`check_cgroups_in`] for this process.
pub fn check_cgroups() -> Result<(), HostCheckError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v2 = std::fs::read_to_string(Path::new("/sys/fs/cgroup/cgroup.controllers")).ok();
    check_cgroups_in(&mountinfo, v2.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 31 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn a_hybrid_host_passes() {
        assert_eq!(check_cgroups_in(HYBRID, None), Ok(()));
    }

    #[test]
    fn a_pure_v2_host_passes_with_its_controllers() {
        let v2 = "36 23 0:33 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            check_cgroups_in(v2, Some("cpuset cpu io memory pids\n")),
            Ok(())
        );
        let err = check_cgroups_in(v2, Some("cpuset io\n")).unwrap_err();
        assert!(
            matches!(&err, HostCheckError::ControllersMissing { missing, .. } if missing == &["cpu", "memory", "pids"]),
            "{err:?}"
        );
    }

    #[test]
    fn ip_netns_exec_hides_them_and_the_error_says_what_to_do() {
        // What `ip netns exec` leaves: its own sysfs on /sys, nothing under it.
        let hidden = "51 48 0:40 / /sys rw,relatime - sysfs tugchk rw\n";
        let err = check_cgroups_in(hidden, None).unwrap_err();
        assert_eq!(err, HostCheckError::CgroupsHidden);
        let text = err.to_string();
        assert!(text.contains("ip netns exec"), "{text}");
        assert!(text.contains("nsenter --net=/run/netns/NAME"), "{text}");
    }
}
