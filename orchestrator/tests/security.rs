//! Root test: what an instance may do on its host (issue 15). Under `tugboat up`, instances
//! hold Docker's capability set, run under the runtime's default seccomp filter with
//! no_new_privs, and may bind-mount only the host paths their agent allows.

mod host;

use host::{wait_for, TestHost};
use std::time::Duration;
use tugboat::spec::parse_spec_file;

const START: Duration = Duration::from_secs(120);

/// Each service reports what it sees into its own named volume, then sleeps.
const SPEC: &str = r#"
services:
  confined:
    image: shop/catalog:1
    command: [sh, -c, "grep -E '^(Seccomp|NoNewPrivs|CapBnd|CapEff):' /proc/self/status > /out/status; mkdir -p /tmp/m; busybox mount -t tmpfs t /tmp/m 2>> /out/mount; echo rc=$? >> /out/mount; exec sleep 1000"]
    security: {cap_add: [SYS_ADMIN]}
    volumes: [{type: volume, source: confined-out, target: /out}]
    stop: {grace_seconds: 1}
  unconfined:
    image: shop/catalog:1
    command: [sh, -c, "grep -E '^(Seccomp|NoNewPrivs|CapBnd|CapEff):' /proc/self/status > /out/status; mkdir -p /tmp/m; busybox mount -t tmpfs t /tmp/m 2>> /out/mount; echo rc=$? >> /out/mount; exec sleep 1000"]
    security: {cap_add: [SYS_ADMIN], seccomp: unconfined}
    volumes: [{type: volume, source: unconfined-out, target: /out}]
    stop: {grace_seconds: 1}
  plain:
    image: shop/catalog:1
    command: [sh, -c, "cat /proc/self/oom_score_adj > /out/oom; grep -E '^(Seccomp|NoNewPrivs|CapBnd|CapEff):' /proc/self/status > /out/status; exec sleep 1000"]
    volumes: [{type: volume, source: plain-out, target: /out}]
    security: {read_only_root: true}
    stop: {grace_seconds: 1}
"#;

fn out(host: &TestHost, volume: &str, file: &str) -> String {
    std::fs::read_to_string(host.dir.join(format!("agent/volumes/{volume}/{file}")))
        .unwrap_or_default()
}

/// The capability bits of a `CapBnd:`-style line.
fn caps(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap_or(u64::MAX)
}

#[test]
fn instances_run_confined_and_host_paths_need_the_agents_leave() {
    skip_unless_possible!("instances_run_confined_and_host_paths_need_the_agents_leave");
    let mut host = TestHost::new();
    let spec = host.dir.join("security.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    host.start_up(&spec);
    let show = |host: &TestHost| {
        format!(
            "{:#?}\n{}",
            host::instances(host),
            host.output.lock().unwrap()
        )
    };
    wait_for(
        "the three services to report",
        START,
        || {
            out(&host, "confined-out", "mount").contains("rc=")
                && out(&host, "unconfined-out", "mount").contains("rc=")
                && !out(&host, "plain-out", "status").is_empty()
        },
        || show(&host),
    );

    // The default: a seccomp filter, no_new_privs, Docker's 14 capabilities.
    let plain = out(&host, "plain-out", "status");
    assert!(plain.contains("Seccomp:\t2"), "{plain}");
    assert!(plain.contains("NoNewPrivs:\t1"), "{plain}");
    let docker_default: u64 = 0x00000000a80425fb;
    assert_eq!(caps(&plain, "CapBnd"), docker_default, "{plain}");
    assert_eq!(caps(&plain, "CapEff"), docker_default, "{plain}");

    // No request, no limit: best-effort, the first the kernel's OOM killer takes, and the
    // least CPU share on a busy host.
    assert_eq!(out(&host, "plain-out", "oom").trim(), "1000");
    let plain_id = host::instances(&host)
        .into_iter()
        .find(|i| i.service == "plain")
        .unwrap()
        .id;
    let shares = ["cpu,cpuacct", "cpu"]
        .iter()
        .find_map(|c| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/{c}/tug/{plain_id}/cpu.shares")).ok()
        })
        .or_else(|| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/tug/{plain_id}/cpu.weight")).ok()
        })
        .unwrap_or_default();
    assert!(
        matches!(shares.trim(), "2" | "1"),
        "cpu.shares/weight: {shares}"
    );

    // With CAP_SYS_ADMIN added, mount(2) is still refused by the filter (EPERM, which
    // busybox words as "permission denied")...
    let confined = out(&host, "confined-out", "status");
    assert_eq!(caps(&confined, "CapBnd"), docker_default | 1 << 21);
    let mount = out(&host, "confined-out", "mount");
    assert!(
        mount.to_lowercase().contains("permission denied") && !mount.contains("rc=0"),
        "{mount}"
    );
    // ...and allowed without it: the EPERM above was the filter's.
    let unconfined = out(&host, "unconfined-out", "status");
    assert!(unconfined.contains("Seccomp:\t0"), "{unconfined}");
    assert!(
        out(&host, "unconfined-out", "mount").contains("rc=0"),
        "{}",
        out(&host, "unconfined-out", "mount")
    );

    // A read-only root: the instance cannot write outside its volumes.
    let plain_id = host::instances(&host)
        .into_iter()
        .find(|i| i.service == "plain")
        .unwrap()
        .id;
    let server_dir = host.dir.join("server");
    let rootfs_write = host.in_netns(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .arg("--data-dir")
            .arg(&server_dir)
            .args(["--addr", host::API, "exec", &plain_id, "--"])
            .args(["sh", "-c", "echo x > /www/x"])
            .output()
            .unwrap()
    });
    let said = String::from_utf8_lossy(&rootfs_write.stderr).to_string()
        + &String::from_utf8_lossy(&rootfs_write.stdout);
    assert!(
        !rootfs_write.status.success() && said.contains("Read-only"),
        "{said}"
    );

    // A service applied later, asking for the host's /: refused on this node by name,
    // since `up`'s agent allows only the host paths of the spec file it was started with.
    let rooted = "services:\n  rooted:\n    image: shop/catalog:1\n    command: [sleep, '1000']\n    volumes: [{type: bind, source: /, target: /host}]\n";
    let file = parse_spec_file("rooted.yaml", rooted, &|_| false).unwrap();
    host.api(|c| async move { c.apply(&file).await }).unwrap();
    let message = |host: &TestHost| host::message_of(host, "rooted");
    wait_for(
        "rooted to be refused",
        START,
        || message(&host).contains("host paths are not allowed"),
        || show(&host),
    );
    let m = message(&host);
    assert!(
        m.contains("volume source /") && m.contains("--allow-host-path"),
        "{m}"
    );

    // A secret: a file on a tmpfs, owned by the instance's user, read-only, never on disk.
    let password = "s3cret-tugboat-test-value";
    let mut data = std::collections::BTreeMap::new();
    use base64::Engine;
    data.insert(
        "password".to_string(),
        base64::engine::general_purpose::STANDARD.encode(password),
    );
    let request = tugboat::wire::SecretRequest {
        name: "db".into(),
        data,
    };
    host.api(|c| async move { c.put_secret(&request).await })
        .unwrap();
    let vault = "services:\n  vault:\n    image: shop/catalog:1\n    command: [sleep, '1000']\n    secrets: [{secret: db}]\n    security: {user: '33:33'}\n    stop: {grace_seconds: 1}\n";
    let file = parse_spec_file("vault.yaml", vault, &|_| false).unwrap();
    host.api(|c| async move { c.apply(&file).await }).unwrap();
    let vault_id = |host: &TestHost| {
        host::instances(host)
            .into_iter()
            .find(|i| i.service == "vault" && i.phase == tugboat::model::InstancePhase::Running)
            .map(|i| i.id)
    };
    wait_for(
        "vault to run",
        START,
        || vault_id(&host).is_some(),
        || show(&host),
    );
    let id = vault_id(&host).unwrap();
    let read = host.in_netns(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .arg("--data-dir")
            .arg(&server_dir)
            .args(["--addr", host::API, "exec", &id, "--"])
            .args([
                "sh",
                "-c",
                "cat /run/secrets/db/password; echo; id -u; echo x > /run/secrets/db/password",
            ])
            .output()
            .unwrap()
    });
    let said =
        String::from_utf8_lossy(&read.stdout).to_string() + &String::from_utf8_lossy(&read.stderr);
    assert!(said.starts_with(&format!("{password}\n33\n")), "{said}");
    assert!(
        said.contains("Read-only") || said.contains("denied"),
        "{said}"
    );
    let on_node = host.dir.join("agent/instances").join(&id).join("secrets");
    assert!(on_node.join("db/password").exists());
    let fs = nix::sys::statfs::statfs(&on_node).unwrap();
    assert_eq!(fs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    assert!(
        !grep_dir(&host.dir, password.as_bytes(), &on_node),
        "the secret is written under the data dir"
    );
    host.api(|c| async move { c.delete_service("vault").await })
        .unwrap();
    wait_for(
        "vault's secrets to leave the node",
        START,
        || !on_node.exists(),
        || show(&host),
    );
    assert!(host.stop_up());
}

/// Whether any file under `dir`, but not under `skip`, holds `needle`.
fn grep_dir(dir: &std::path::Path, needle: &[u8], skip: &std::path::Path) -> bool {
    if dir == skip {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => grep_dir(&path, needle, skip),
            Ok(t) if t.is_file() => std::fs::read(&path)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false),
            _ => false,
        }
    })
}
