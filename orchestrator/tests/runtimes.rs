//! Root test: a service run under another OCI runtime (`runtime: runc`, Debian's runc),
//! driven through its command line by the agent and its monitor: created and started with
//! its limits, its output in `tugboat logs`, `tugboat exec` in it, restarted after it is
//! killed, and gone when deleted. A runtime the node lacks keeps the instance pending with
//! the reason; one given by a path that is not there fails it with the path and the node.

mod host;

use host::{wait_for, TestHost};
use std::time::Duration;
use tugboat::model::InstancePhase;
use tugboat::spec::parse_spec_file;

const START: Duration = Duration::from_secs(120);

const SPEC: &str = r#"
services:
  under-runc:
    image: shop/catalog:1
    runtime: runc
    command: [sh, -c, "echo hello from $(hostname); exec httpd -f -p 80 -h /www"]
    resources:
      limits: {memory: 48Mi, pids: 64}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1}
    stop: {grace_seconds: 1}
"#;

fn runc_available() -> bool {
    std::process::Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_service_runs_under_runc_and_a_missing_runtime_says_so() {
    skip_unless_possible!("a_service_runs_under_runc_and_a_missing_runtime_says_so");
    if !runc_available() {
        eprintln!("SKIP a_service_runs_under_runc_and_a_missing_runtime_says_so: no runc on PATH (apt-get install runc)");
        return;
    }
    let mut host = TestHost::new();
    let spec = host.dir.join("runtimes.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    host.start_up(&spec);
    let show = |host: &TestHost| {
        format!(
            "{:#?}\n{}",
            host::instances(host),
            host.output.lock().unwrap()
        )
    };
    let running = |host: &TestHost| {
        host::instances(host)
            .into_iter()
            .find(|i| i.service == "under-runc" && i.ready && i.phase == InstancePhase::Running)
    };
    wait_for(
        "under-runc ready",
        START,
        || running(&host).is_some(),
        || show(&host),
    );
    let first = running(&host).unwrap();
    // runc made it: its state is under the agent's runc root, not tug's.
    let runc_root = host.dir.join("agent/runtime-runc");
    assert!(
        runc_root.join(&first.id).join("state.json").exists(),
        "{}",
        show(&host)
    );
    assert!(!host.dir.join("agent/runtime").join(&first.id).exists());
    // Its limits: the memory cgroup says 48Mi (v1 on this host, or v2).
    let limit = ["memory/tug", "tug"]
        .iter()
        .find_map(|base| {
            let dir = std::path::Path::new("/sys/fs/cgroup")
                .join(base)
                .join(&first.id);
            std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(dir.join("memory.max")))
                .ok()
        })
        .unwrap_or_default();
    assert_eq!(limit.trim(), (48u64 << 20).to_string(), "{}", show(&host));

    let cli = |args: &[&str]| host.cli(args);
    // Its output, through the monitor's pipes.
    let logs = cli(&["logs", &first.id]);
    let text = String::from_utf8_lossy(&logs.stdout).to_string();
    assert!(text.contains(&format!("hello from {}", first.id)), "{text}");
    // exec, through `runc exec`: the exit code comes back.
    let exec = cli(&[
        "exec",
        &first.id,
        "--",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; exit 7",
    ]);
    let said = String::from_utf8_lossy(&exec.stdout).to_string();
    assert_eq!(
        exec.status.code(),
        Some(7),
        "{said}{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert!(said.contains("64"), "{said}");
    // exec -t is refused with a reason, not hung.
    let tty = cli(&["exec", "-t", &first.id, "--", "true"]);
    assert!(!tty.status.success());

    // Killed from outside: restarted under runc.
    let pid = std::fs::read_to_string(runc_root.join(&first.id).join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["init_process_pid"].as_i64())
        .expect("runc's state has the init pid");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for(
        "under-runc restarted",
        START,
        || running(&host).is_some_and(|i| i.restarts >= 1),
        || show(&host),
    );

    // A runtime no node has: pending, and why.
    let missing =
        "services:\n  nowhere:\n    image: shop/catalog:1\n    runtime: no-such-oci-runtime\n";
    let file = parse_spec_file("m.yaml", missing, &|_| false).unwrap();
    host.api(|c| async move { c.apply(&file).await }).unwrap();
    let pending = |host: &TestHost| {
        host.api(|c| async move { c.describe_service("nowhere").await })
            .map(|d| format!("{d:?}"))
            .unwrap_or_default()
    };
    wait_for(
        "nowhere pending for its runtime",
        START,
        || pending(&host).contains("no runtime no-such-oci-runtime"),
        || pending(&host),
    );
    // A runtime by a path that is not there: the instance says which and where.
    let by_path =
        "services:\n  bypath:\n    image: shop/catalog:1\n    runtime: /opt/no-such/runsc\n";
    let file = parse_spec_file("p.yaml", by_path, &|_| false).unwrap();
    host.api(|c| async move { c.apply(&file).await }).unwrap();
    let message = |host: &TestHost| host::message_of(host, "bypath");
    wait_for(
        "bypath to fail with its path",
        START,
        || message(&host).contains("runtime /opt/no-such/runsc is not installed on node"),
        || show(&host),
    );

    // Deleted: nothing of runc's is left.
    host.api(|c| async move { c.delete_service("under-runc").await })
        .unwrap();
    wait_for(
        "under-runc gone from runc",
        START,
        || {
            std::fs::read_dir(&runc_root)
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        },
        || show(&host),
    );
    // runc also made tug's parent in a hybrid host's unified tree: gone with its last
    // container (no other test runs containers under runc). The agent removes it just after
    // `runc delete` returns, and runc's state can be gone a moment before: waited for.
    let unified = std::path::Path::new("/sys/fs/cgroup/unified");
    if unified.is_dir() {
        wait_for(
            "/sys/fs/cgroup/unified/tug removed after runc's last container",
            Duration::from_secs(10),
            || !unified.join("tug").exists(),
            || show(&host),
        );
    }
    assert!(host.stop_up());
}
