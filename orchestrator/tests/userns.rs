//! Root test of `security: {user_namespace: true}` under `tugboat up`: each instance's root
//! is an unprivileged range of the node's ids, different per instance and kept across a
//! restart of its container; the image, a named volume and /etc/hosts look as usual inside
//! (idmapped), the container writes its rootfs and binds port 80, and nothing of it is left
//! mounted after `up` stops.

mod host;

use host::{instances, wait_for, TestHost};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tugboat::model::{Instance, InstancePhase};

const START: Duration = Duration::from_secs(120);

const SPEC: &str = r#"
services:
  mapped:
    image: shop/catalog:1
    replicas: 2
    command: [sh, -c, "h=$(hostname); cat /proc/self/uid_map > /out/$h.map; id -u > /out/$h.id; touch /out/$h.touched; echo made-in-rootfs > /www/made; exec /bin/httpd -f -p 80 -h /www"]
    security: {user_namespace: true}
    volumes: [{type: volume, source: mapped-out, target: /out}]
    health:
      readiness: {http: {port: 80, path: /made}, interval_seconds: 1}
    stop: {grace_seconds: 1}
  plain:
    image: shop/catalog:1
    command: [sh, -c, "cat /proc/self/uid_map > /out/map; exec sleep 1000"]
    volumes: [{type: volume, source: plain-out, target: /out}]
    stop: {grace_seconds: 1}
"#;

/// `<inside> <host> <count>` of a uid_map line.
fn map_of(text: &str) -> Option<(u64, u64, u64)> {
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 3).then(|| (f[0], f[1], f[2]))
}

fn out(host: &TestHost, volume: &str, file: &str) -> String {
    std::fs::read_to_string(host.dir.join(format!("agent/volumes/{volume}/{file}")))
        .unwrap_or_default()
}

fn mapped_ready(host: &TestHost) -> Vec<Instance> {
    instances(host)
        .into_iter()
        .filter(|i| i.service == "mapped" && i.phase == InstancePhase::Running && i.ready)
        .collect()
}

/// Mount points under `dir` in this mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// A file under `dir` whose path ends with `tail`.
fn find(dir: &Path, tail: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.to_string_lossy().ends_with(tail) {
            return Some(p);
        }
        if entry.file_type().ok()?.is_dir() {
            if let Some(found) = find(&p, tail) {
                return Some(found);
            }
        }
    }
    None
}

/// The host uid of a process, from /proc/PID/status.
fn host_uid(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The pid of the instance's container init, from tug's state.
fn init_pid(host: &TestHost, id: &str) -> Option<u32> {
    let state = find(&host.dir, &format!("runtime/{id}/state.json"))?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(state).ok()?).ok()?;
    json["pid"].as_u64().map(|p| p as u32)
}

fn exec(host: &TestHost, id: &str, command: &[&str]) -> String {
    let id = id.to_string();
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    match host.api(|c| async move { c.exec(&id, &command).await }) {
        Ok(r) if r.exit_code == 0 => r.stdout,
        Ok(r) => format!("exit {}: {}{}", r.exit_code, r.stdout, r.stderr),
        Err(e) => format!("exec failed: {e}"),
    }
}

#[test]
fn instances_in_user_namespaces_are_unprivileged_on_the_node_and_whole_inside() {
    skip_unless_possible!("userns");
    let mut host = TestHost::new();
    let spec = host.dir.join("userns.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    host.start_up(&spec);
    let show = |host: &TestHost| {
        format!(
            "{}\n{}",
            tugboat::output::instances_table(&instances(host), tugboat::model::now_ms(), false),
            host.output.lock().unwrap()
        )
    };
    wait_for(
        "two mapped instances ready (httpd on port 80, serving a file it wrote) and plain running",
        START,
        || mapped_ready(&host).len() == 2 && !out(&host, "plain-out", "map").is_empty(),
        || show(&host),
    );
    let mapped = mapped_ready(&host);
    let (a, b) = (&mapped[0].id, &mapped[1].id);

    // Inside: root, over a range of the node's ids of its own.
    let mut ranges = vec![];
    for id in [a, b] {
        let (inside, outside, count) = map_of(&out(&host, "mapped-out", &format!("{id}.map")))
            .unwrap_or_else(|| panic!("{id}'s uid_map\n{}", show(&host)));
        assert_eq!((inside, count), (0, 65536), "{id}");
        assert!(outside >= 1 << 30, "{id}: root is host uid {outside}");
        assert_eq!(out(&host, "mapped-out", &format!("{id}.id")).trim(), "0");
        ranges.push(outside);
        // On the node, the container's processes run as that unprivileged uid.
        let pid = init_pid(&host, id).unwrap_or_else(|| panic!("{id}'s state.json"));
        assert_eq!(host_uid(pid), Some(outside), "{id}'s init (pid {pid})");
        // What it wrote in its rootfs is in its writable layer under its own ids.
        let made = find(&host.dir, &format!("rootfs/{id}/upper/www/made"))
            .unwrap_or_else(|| panic!("{id}'s upper layer"));
        assert_eq!(u64::from(std::fs::metadata(&made).unwrap().uid()), outside);
    }
    assert_ne!(ranges[0], ranges[1], "two instances share ids");
    assert!(ranges[0].abs_diff(ranges[1]) >= 65536, "{ranges:?} overlap");
    // Without: the node's ids.
    assert_eq!(
        map_of(&out(&host, "plain-out", "map")),
        Some((0, 0, 4294967295))
    );

    // The shared volume is idmapped: on disk what each wrote is root's, and each sees the
    // other's file as its own root's although their ranges differ.
    let touched = host
        .dir
        .join(format!("agent/volumes/mapped-out/{a}.touched"));
    assert_eq!(std::fs::metadata(&touched).unwrap().uid(), 0);
    assert_eq!(
        exec(
            &host,
            b,
            &[
                "busybox",
                "stat",
                "-c",
                "%u:%g",
                &format!("/out/{a}.touched")
            ]
        )
        .trim(),
        "0:0"
    );
    // The image's files are root's inside too, /etc/hosts as well.
    assert_eq!(
        exec(
            &host,
            a,
            &["busybox", "stat", "-c", "%u", "/bin/busybox", "/etc/hosts"]
        )
        .trim(),
        "0\n0"
    );

    // A restart of the container keeps the instance's range.
    host.kill_container(a);
    wait_for(
        "a restarted in place",
        START,
        || {
            instances(&host)
                .iter()
                .any(|i| &i.id == a && i.restarts >= 1 && i.ready)
        },
        || show(&host),
    );
    let again = map_of(&out(&host, "mapped-out", &format!("{a}.map"))).unwrap();
    assert_eq!(again.1, ranges[0], "a's range changed across a restart");

    // Nothing left mounted once up stops.
    assert!(host.stop_up(), "up did not stop\n{}", show(&host));
    let left = mounts_under(&host.dir);
    assert!(left.is_empty(), "left mounted: {left:?}");
}
