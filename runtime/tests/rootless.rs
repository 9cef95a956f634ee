//! Root test that runs tug as an unprivileged user (nobody, via setpriv): a rootless
//! container in a user namespace that maps only the user's own ids.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use common::{id, show};
use serde_json::json;

const NOBODY: u32 = 65534;

#[test]
fn an_unprivileged_user_runs_a_container() {
    skip_unless_root!("an_unprivileged_user_runs_a_container");
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP an_unprivileged_user_runs_a_container: needs setpriv (util-linux)");
        return;
    }
    let mut env = common::Env::new(&[
        "sh",
        "-c",
        "echo uid=$(id -u) host=$(hostname); touch /data/made-inside; exit 3",
    ]);
    let data = env.dir.path().join("data");
    let state = env.dir.path().join("state-nobody");
    for d in [&data, &state] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(env.rootfs().join("data")).unwrap();
    env.edit(|s| {
        s["hostname"] = json!("rootless");
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": NOBODY, "size": 1}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": NOBODY, "size": 1}]);
        // gid 5 (tty) is not mapped: devpts cannot take it, as with `runc spec --rootless`.
        for m in s["mounts"].as_array_mut().unwrap() {
            if let Some(opts) = m["options"].as_array_mut() {
                opts.retain(|o| o != "gid=5");
            }
        }
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]
        }));
    });
    let id = id("rootless");
    let b = env.bundle();
    // tug as nobody, with its state in a dir nobody owns.
    let run_as_nobody = || {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(common::tug_bin())
            .arg("--root")
            .arg(&state)
            .args(["run", "--bundle", b.to_str().unwrap(), &id])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run_as_nobody();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "uid=0 host=rootless"
    );
    let made = std::fs::metadata(data.join("made-inside")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (NOBODY, NOBODY),
        "root inside is nobody outside"
    );
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "state left");

    // Limits need a cgroup, which the host does not delegate to nobody: refused by field.
    env.edit(|s| s["linux"]["resources"] = json!({"memory": {"limit": 1 << 26}}));
    let out = run_as_nobody();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("linux.resources.memory"),
        "{}",
        show(&out)
    );
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "state left");
}
