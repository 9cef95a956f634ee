//! Root test: `limits.io` on a real cgroup (issue 17): a writer under `write_bps: 5M` with
//! O_DIRECT writes at 5 MB/s ± 15%, and the cgroup holds the rule for the data's disk.

mod host;

use host::{wait_for, TestHost};
use std::time::Duration;

const SPEC: &str = r#"
services:
  writer:
    image: shop/catalog:1
    command: [sh, -c, "a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of=/out/f bs=1M count=10 oflag=direct 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b > /out/dd.tmp; mv /out/dd.tmp /out/dd; exec sleep 1000"]
    resources:
      limits: {io: {write_bps: 5M}}
    volumes: [{type: volume, source: writer-out, target: /out}]
    stop: {grace_seconds: 1}
"#;

#[test]
fn a_writer_under_write_bps_writes_at_that_rate() {
    skip_unless_possible!("a_writer_under_write_bps_writes_at_that_rate");
    let mut host = TestHost::new();
    let Some((major, minor)) = tugboat::agent::bundle::block_device_of(&host.dir) else {
        eprintln!(
            "SKIP a_writer_under_write_bps_writes_at_that_rate: {} is not on a block device",
            host.dir.display()
        );
        return;
    };
    if !std::path::Path::new("/sys/fs/cgroup/blkio").is_dir()
        && !std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .unwrap_or_default()
            .contains("io")
    {
        eprintln!("SKIP a_writer_under_write_bps_writes_at_that_rate: no blkio/io controller");
        return;
    }
    let spec = host.dir.join("limits.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    host.start_up(&spec);
    let out = host.dir.join("agent/volumes/writer-out/dd");
    let show = |host: &TestHost| format!("{:#?}", host::instances(host));
    wait_for(
        "the writer to finish",
        Duration::from_secs(120),
        || out.exists(),
        || show(&host),
    );
    let id = host::instances(&host)
        .into_iter()
        .find(|i| i.service == "writer")
        .unwrap()
        .id;
    // The rule, on the disk that holds the data.
    let v1 = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/blkio/tug/{id}/blkio.throttle.write_bps_device"
    ));
    let v2 = std::fs::read_to_string(format!("/sys/fs/cgroup/tug/{id}/io.max"));
    let rule = v1.or(v2).unwrap_or_default();
    assert!(
        rule.contains(&format!("{major}:{minor} 5000000"))
            || rule.contains(&format!("{major}:{minor} rbps=max wbps=5000000")),
        "{rule}"
    );
    // /proc/uptime before and after the write, in the container.
    let said = std::fs::read_to_string(&out).unwrap();
    let t: Vec<f64> = said
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(t.len(), 2, "{said}");
    let seconds = t[1] - t[0];
    let rate = 10.0 * 1048576.0 / seconds;
    assert!(
        (rate - 5e6).abs() <= 0.15 * 5e6,
        "{rate:.0} bytes/s, not 5 MB/s ± 15%: {said}"
    );
    // A weight where the kernel has none: refused by name, not a cgroup write error.
    if !tugboat::agent::bundle::io_weight_supported() {
        let weighed = "services:\n  weighed:\n    image: shop/catalog:1\n    command: [sleep, '1000']\n    resources: {requests: {io: {weight: 200}}}\n";
        let file = tugboat::spec::parse_spec_file("w.yaml", weighed, &|_| false).unwrap();
        host.api(|c| async move { c.apply(&file).await }).unwrap();
        let message = |host: &TestHost| host::message_of(host, "weighed");
        wait_for(
            "weighed refused",
            Duration::from_secs(60),
            || message(&host).contains("requests.io.weight: this node's kernel does not weigh I/O"),
            || show(&host),
        );
    }
    assert!(host.stop_up());
}
