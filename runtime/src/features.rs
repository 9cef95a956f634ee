//! `tug features`: what this build supports, in the runtime-spec features.md format.

use serde_json::{json, Value};

/// The hook stages, mount options and namespaces tug implements.
pub fn features() -> Value {
    let caps: Vec<String> = {
        let mut v: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
        v.sort();
        v
    };
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand",
            "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime",
            "nosuid", "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared",
            "rslave", "runbindable", "rw", "shared", "silent", "slave", "strictatime", "suid",
            "sync", "unbindable", "nosymfollow", "symfollow", "rro", "rrw", "rnosuid", "rsuid",
            "rnodev", "rdev", "rnoexec", "rexec", "rnoatime", "rstrictatime", "rrelatime",
            "rnodiratime", "rdiratime", "rnosymfollow", "rsymfollow"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": crate::seccomp::features(),
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": true}},
            "memoryPolicy": {
                "modes": ["MPOL_DEFAULT", "MPOL_PREFERRED", "MPOL_BIND", "MPOL_INTERLEAVE",
                          "MPOL_LOCAL", "MPOL_PREFERRED_MANY", "MPOL_WEIGHTED_INTERLEAVE"],
                "flags": ["MPOL_F_NUMA_BALANCING", "MPOL_F_RELATIVE_NODES", "MPOL_F_STATIC_NODES"]
            },
            "netDevices": {"enabled": true}
        },
        "annotations": {
            "org.opencontainers.runc.checkpoint.enabled": "false",
            "io.github.tug.version": env!("CARGO_PKG_VERSION")
        }
    })
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::Features;

    #[test]
    fn features_parse_as_the_spec_defines_them_and_list_the_1_3_fields() {
        let f: Features = serde_json::from_value(super::features()).unwrap();
        let linux = f.linux().as_ref().unwrap();
        let policy = linux.memory_policy().as_ref().unwrap();
        assert!(policy.modes().as_ref().unwrap().len() == 7);
        assert!(policy
            .flags()
            .as_ref()
            .unwrap()
            .contains(&"MPOL_F_STATIC_NODES".to_string()));
        // Every mode features lists, config.json's parser takes.
        for mode in policy.modes().as_ref().unwrap() {
            let p: Result<oci_spec::runtime::LinuxMemoryPolicy, _> =
                serde_json::from_value(serde_json::json!({"mode": mode}));
            assert!(p.is_ok(), "{mode}");
        }
    }
}
