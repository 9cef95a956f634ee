//! Root tests: the container lifecycle on a real busybox bundle (namespaces, mounts, hooks).

mod common;

use common::{id, no_cgroup_left, show, Env};
use serde_json::json;

#[test]
fn run_passes_exit_code_hostname_env_cwd_user() {
    skip_unless_root!("run_passes_exit_code_hostname_env_cwd_user");
    let mut env = Env::new(&[
        "sh",
        "-c",
        "echo $(hostname) $TUGVAR $(pwd) $(id -u) $(id -g) $(id -G); exit 7",
    ]);
    env.edit(|s| {
        s["hostname"] = json!("boxy");
        s["process"]["cwd"] = json!("/tmp");
        s["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [20, 30]});
    });
    let id = id("run");
    let out = env.run(&id);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (head, groups) = line.split_at(line.find(" 1000 1001 ").unwrap() + 11);
    assert_eq!(head, "boxy yes /tmp 1000 1001 ");
    let mut groups: Vec<&str> = groups.split_whitespace().collect();
    groups.sort();
    assert_eq!(groups, ["1001", "20", "30"], "{line}");
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
}

#[test]
fn a_killed_process_exits_128_plus_signal() {
    skip_unless_root!("a_killed_process_exits_128_plus_signal");
    let env = std::sync::Arc::new(Env::new(&["sleep", "100"]));
    let id = id("sig");
    let runner = {
        let (env, id) = (env.clone(), id.clone());
        std::thread::spawn(move || env.run(&id))
    };
    common::wait_for(
        "the container to run",
        std::time::Duration::from_secs(20),
        || env.state_root().join(&id).exists() && env.status(&id) == "running",
    );
    env.ok(&["kill", &id, "KILL"]);
    let out = runner.join().unwrap();
    assert_eq!(out.status.code(), Some(128 + 9), "{}", show(&out));
    no_cgroup_left(&id);
}

#[test]
fn create_start_kill_delete() {
    skip_unless_root!("create_start_kill_delete");
    let env = Env::new(&["sleep", "100"]);
    let id = id("life");
    env.create(&id);
    assert_eq!(env.status(&id), "created");
    let b = env.bundle();
    let again = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        show(&again)
    );
    env.ok(&["start", &id]);
    assert_eq!(env.status(&id), "running");
    let del = env.tug(&["delete", &id]);
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("--force"),
        "{}",
        show(&del)
    );
    env.ok(&["kill", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    let kill = env.tug(&["kill", &id, "TERM"]);
    assert!(!kill.status.success(), "kill of a stopped container");
    env.ok(&["delete", &id]);
    no_cgroup_left(&id);
    let gone = env.tug(&["state", &id]);
    assert!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains(&id),
        "{}",
        show(&gone)
    );
}

#[test]
fn kill_and_delete_in_every_state() {
    skip_unless_root!("kill_and_delete_in_every_state");
    let env = Env::new(&["sleep", "100"]);
    // created: kill stops it, delete removes it.
    let c = id("every-created");
    env.create(&c);
    env.ok(&["kill", &c, "KILL"]);
    env.wait_status(&c, "stopped");
    env.ok(&["delete", &c]);
    // created: delete --force without a kill.
    let cf = id("every-created-force");
    env.create(&cf);
    let out = env.tug(&["delete", "--force", &cf]);
    assert!(out.status.success(), "{}", show(&out));
    // running: delete --force.
    let r = id("every-running");
    env.create(&r);
    env.ok(&["start", &r]);
    let out = env.tug(&["delete", "--force", &r]);
    assert!(out.status.success(), "{}", show(&out));
    // paused: kill by signal name and number, then delete --force.
    let p = id("every-paused");
    env.create(&p);
    env.ok(&["start", &p]);
    env.ok(&["pause", &p]);
    assert_eq!(env.status(&p), "paused");
    let start = env.tug(&["start", &p]);
    assert!(!start.status.success(), "start of a paused container");
    let out = env.tug(&["kill", &p, "9"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = env.tug(&["delete", "--force", &p]);
    assert!(out.status.success(), "{}", show(&out));
    // a bad signal name is refused and named.
    let b = id("every-badsig");
    env.create(&b);
    let out = env.tug(&["kill", &b, "SIGNOPE"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("SIGNOPE"),
        "{}",
        show(&out)
    );
    env.ok(&["delete", "--force", &b]);
    for id in [c, cf, r, p, b] {
        no_cgroup_left(&id);
        assert!(!env.state_root().join(&id).exists(), "{id} state left");
    }
}

#[test]
fn readonly_rootfs_and_masked_paths_hold() {
    skip_unless_root!("readonly_rootfs_and_masked_paths_hold");
    let script = "touch /newfile 2>/dev/null && echo root-writable; \
                  echo x > /proc/sys/kernel/domainname 2>/dev/null && echo sys-writable; \
                  echo timer_list=$(cat /proc/timer_list | wc -c); \
                  echo firmware=$(ls /sys/firmware | wc -l); \
                  touch /scratch/f && echo scratch-writable";
    let mut env = Env::new(&["sh", "-c", script]);
    std::fs::create_dir(env.rootfs().join("scratch")).unwrap();
    env.edit(|s| {
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev"]
        }));
    });
    assert_eq!(env.spec["root"]["readonly"], true);
    // The masked file has content on the host, so reading nothing inside means the mask held.
    assert!(!std::fs::read("/proc/timer_list").unwrap().is_empty());
    let id = id("ro");
    let out = env.run(&id);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("root-writable"), "{text}");
    assert!(!text.contains("sys-writable"), "{text}");
    assert!(text.contains("timer_list=0"), "{text}");
    assert!(text.contains("firmware=0"), "{text}");
    assert!(text.contains("scratch-writable"), "{text}");
    assert!(!env.rootfs().join("newfile").exists());
}

#[test]
fn hooks_run_in_order_with_the_state() {
    skip_unless_root!("hooks_run_in_order_with_the_state");
    let mut env = Env::new(&["true"]);
    let logdir = env.dir.path().join("hooklog");
    std::fs::create_dir(&logdir).unwrap();
    std::fs::create_dir(env.rootfs().join("hooklog")).unwrap();
    let host_log = logdir.join("log");
    // startContainer runs inside the container: it sees the log through a bind mount.
    let hook = |name: &str, log: &str| {
        json!({"path": "/bin/busybox",
               "args": ["busybox", "sh", "-c", format!("echo \"{name} $(cat)\" >> {log}")]})
    };
    let h = host_log.to_str().unwrap().to_string();
    env.edit(|s| {
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/hooklog", "type": "bind", "source": logdir, "options": ["rbind"]
        }));
        s["hooks"] = json!({
            "prestart": [hook("prestart", &h)],
            "createRuntime": [hook("createRuntime", &h)],
            "createContainer": [hook("createContainer", &h)],
            "startContainer": [hook("startContainer", "/hooklog/log")],
            "poststart": [hook("poststart", &h)],
            "poststop": [hook("poststop", &h)],
        });
    });
    let id = id("hooks");
    env.create(&id);
    env.ok(&["start", &id]);
    env.wait_status(&id, "stopped");
    env.ok(&["delete", &id]);
    let log = std::fs::read_to_string(&host_log).unwrap();
    let names: Vec<&str> = log
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ],
        "{log}"
    );
    for line in log.lines() {
        let state: serde_json::Value =
            serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        assert_eq!(state["id"], id.as_str(), "{line}");
        assert_eq!(state["bundle"], env.bundle().to_str().unwrap(), "{line}");
    }
    no_cgroup_left(&id);
}

#[test]
fn a_failing_hook_fails_create_and_leaves_nothing() {
    skip_unless_root!("a_failing_hook_fails_create_and_leaves_nothing");
    let mut env = Env::new(&["true"]);
    env.edit(|s| {
        s["hooks"] =
            json!({"createRuntime": [{"path": "/bin/busybox", "args": ["busybox", "false"]}]});
    });
    let id = id("badhook");
    let b = env.bundle();
    let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("createRuntime"), "{err}");
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
}

#[test]
fn bad_config_leaves_nothing() {
    skip_unless_root!("bad_config_leaves_nothing");
    let env = Env::new(&["no-such-program"]);
    let id = id("bad");
    let b = env.bundle();
    let out = env.tug(&["create", &id, "--bundle", b.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("process.args[0]") && err.contains("no-such-program"),
        "{err}"
    );
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
}

#[test]
fn a_bundle_without_config_is_named_once_and_leaves_nothing() {
    skip_unless_root!("a_bundle_without_config_is_named_once_and_leaves_nothing");
    let env = Env::new(&["true"]);
    let id = id("noconf");
    let empty = tempfile::tempdir().unwrap();
    let out = env.tug(&["create", &id, "--bundle", empty.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    let config = empty.path().join("config.json");
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}: cannot read", config.display())),
        "{err}"
    );
    // The cause once, not once per level of the error chain.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
}

#[test]
fn a_failing_start_container_hook_fails_start() {
    skip_unless_root!("a_failing_start_container_hook_fails_start");
    let mut env = Env::new(&["sleep", "100"]);
    env.edit(|s| {
        s["hooks"] =
            json!({"startContainer": [{"path": "/bin/busybox", "args": ["busybox", "false"]}]});
    });
    let id = id("badstart");
    env.create(&id);
    let out = env.tug(&["start", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("startContainer"),
        "{}",
        show(&out)
    );
    assert_eq!(env.status(&id), "stopped");
    env.ok(&["delete", &id]);
    no_cgroup_left(&id);
}

#[test]
fn start_container_hooks_without_env_see_the_process_env() {
    skip_unless_root!("start_container_hooks_without_env_see_the_process_env");
    let mut env = Env::new(&["true"]);
    let dump = |file: &str| json!({"path": "/bin/busybox", "args": ["busybox", "sh", "-c", format!("env > {file}")]});
    env.edit(|s| {
        s["root"]["readonly"] = json!(false);
        let mut given = dump("/env-given");
        given["env"] = json!(["ONLY=this"]);
        s["hooks"] = json!({"startContainer": [dump("/env-default"), given]});
    });
    let id = id("hookenv");
    let out = env.run(&id);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let read = |f: &str| std::fs::read_to_string(env.rootfs().join(f)).unwrap();
    // No env: the container process's (PATH=/bin, TUGVAR=yes from the test's config, and
    // the HOME init adds).
    let default = read("env-default");
    for var in ["PATH=/bin", "TUGVAR=yes", "HOME=/"] {
        assert!(default.lines().any(|l| l == var), "no {var} in\n{default}");
    }
    // An env of its own: that, and nothing of the process's.
    let given = read("env-given");
    assert!(given.lines().any(|l| l == "ONLY=this"), "{given}");
    assert!(!given.contains("TUGVAR"), "{given}");
    no_cgroup_left(&id);
}

#[test]
fn run_relays_a_terminal_when_there_is_no_console_socket() {
    skip_unless_root!("run_relays_a_terminal_when_there_is_no_console_socket");
    let mut env = Env::new(&["sh"]);
    env.edit(|s| s["process"]["terminal"] = json!(true));
    let id = id("tty");
    let b = env.bundle();
    // script(1) gives tug a terminal and types what it reads from its stdin into it.
    let cmd = format!(
        "{} --root {} run --bundle {} {id}",
        common::tug_bin().display(),
        env.state_root().display(),
        b.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"tty\necho $((6*7))\nexit 7\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("42"), "{text}");
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
}

#[test]
fn a_console_socket_that_does_not_exist_is_named_and_leaves_nothing() {
    skip_unless_root!("a_console_socket_that_does_not_exist_is_named_and_leaves_nothing");
    let mut env = Env::new(&["sh"]);
    env.edit(|s| s["process"]["terminal"] = json!(true));
    let id = id("nosock");
    let b = env.bundle();
    let sock = env.dir.path().join("no-such.sock");
    let out = env.tug(&[
        "create",
        &id,
        "--bundle",
        b.to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no-such.sock"),
        "{}",
        show(&out)
    );
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);
}
