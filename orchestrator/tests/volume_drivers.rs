//! Root tests of volume objects on a real agent (docs/volumes.md): a sized local volume is
//! an ext4 image whose writers meet ENOSPC at its size, whose usage reaches the server (and
//! an event past 80%), and that leaves nothing behind after `volume rm`; an exec plugin's
//! lifecycle, with a snapshot (its user paused) and a restore through it; an NFS volume
//! that cannot be mounted is a clear status with nothing half-mounted, and so are its
//! snapshot and restore; bad volumes are refused naming the field; a service on a shared
//! (multi-node-writer) volume is rescheduled with its data when its node dies.

mod host;

use host::{exec_sh as exec, instances_of as of, lacks, running, wait_for, TestHost, TwoNodes};
use std::path::{Path, PathBuf};
use std::time::Duration;

const START: Duration = Duration::from_secs(120);
/// The agent measures every 10 s.
const USAGE: Duration = Duration::from_secs(60);

/// Loop devices whose backing file is `image`.
fn loops_of(image: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return vec![];
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim().trim_end_matches(" (deleted)")) == image)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

const SIZED: &str = r#"
volumes:
  ledger: {size: 16Mi}
services:
  books:
    image: shop/catalog:1
    replicas: 1
    volumes:
      - {type: volume, source: ledger, target: /data}
    stop: {grace_seconds: 1}
"#;

#[test]
fn a_sized_local_volume_stops_a_writer_at_its_size_reports_usage_and_goes_with_rm() {
    skip_unless_possible!("a_sized_local_volume");
    if lacks("mkfs.ext4", "a_sized_local_volume", "Debian's e2fsprogs") {
        return;
    }
    let mut host = TestHost::new();
    let spec = host.dir.join("sized.yaml");
    std::fs::write(&spec, SIZED).unwrap();
    host.start_up(&spec);
    let agent = host.dir.join("agent");
    let image = agent.join("volume-images/ledger.ext4");
    let mountpoint = agent.join("volumes/ledger");
    let show = |host: &TestHost| {
        format!(
            "{:#?}\n{:#?}",
            of(host, "books"),
            host.api(|c| async move { c.volume("ledger").await })
        )
    };
    wait_for(
        "books running on its volume",
        START,
        || running(&host, "books").is_some(),
        || show(&host),
    );
    let id = running(&host, "books").unwrap().id;
    assert!(
        mounted(&mountpoint),
        "{} is not a mount",
        mountpoint.display()
    );
    assert_eq!(loops_of(&image).len(), 1, "one loop device for the image");
    // Sparse: the image takes what ext4 wrote, not its size.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), 16 << 20);

    // A writer asks for 64 MiB and gets ENOSPC at the volume's size; the host's disk
    // is not filled.
    let (code, said) = exec(
        &host,
        &id,
        "dd if=/dev/zero of=/data/fill bs=1M count=64 2>&1; echo exit=$?",
    );
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("No space left on device"), "{said}");
    assert!(!said.contains("exit=0"), "{said}");
    let (_, size) = exec(&host, &id, "wc -c < /data/fill");
    let written: u64 = size.trim().parse().unwrap();
    assert!(
        written > 8 << 20 && written <= 16 << 20,
        "wrote {written} bytes into a 16Mi volume"
    );
    assert!(
        std::fs::metadata(&image).unwrap().blocks() * 512 <= 17 << 20,
        "the image grew past its size"
    );

    // Usage reaches the server, with an event for crossing 80%.
    wait_for(
        "the volume's usage past 80% on the server",
        USAGE,
        || {
            host.api(|c| async move { c.volume("ledger").await })
                .is_ok_and(|v| v.usage.iter().any(|u| u.percent() >= 80))
        },
        || show(&host),
    );
    let volume = host
        .api(|c| async move { c.volume("ledger").await })
        .unwrap();
    assert_eq!(volume.size_bytes, Some(16 << 20));
    assert_eq!(volume.users, vec![id.clone()]);
    assert_eq!(volume.node.as_deref(), Some("local"), "{volume:#?}");
    let usage = &volume.usage[0];
    assert!(
        usage.bytes_total > 12 << 20 && usage.bytes_total <= 16 << 20,
        "{usage:?}"
    );
    assert!(usage.inodes_total > 0, "{usage:?}");
    // And in /metrics, labelled by volume and node.
    let (_, metrics) = host.get_api("/metrics");
    for line in [
        "tugboat_volume_mounted{volume=\"ledger\",node=\"local\"} 1".to_string(),
        format!(
            "tugboat_volume_size_bytes{{volume=\"ledger\",node=\"local\"}} {}",
            usage.bytes_total
        ),
        "tugboat_volume_used_bytes{volume=\"ledger\",node=\"local\"} ".to_string(),
    ] {
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
    let events: tugboat::wire::Listed<tugboat::model::Event> = host
        .api(|c| async move {
            c.call(
                reqwest::Method::GET,
                "/v1/events?kind=volume&name=ledger",
                None,
            )
            .await
        })
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason == "usage" && e.name == "ledger" && e.message.contains("% full")),
        "{events:#?}"
    );

    // In use: `volume rm` is refused, naming the service.
    let refused = host.api(|c| async move { c.delete_volume("ledger").await });
    let e = refused.unwrap_err().to_string();
    assert!(
        e.contains("volume ledger is mounted by service books"),
        "{e}"
    );

    // The service gone, then the volume: the node unmounts it, detaches the loop device
    // and removes the image and the directory.
    host.api(|c| async move { c.delete_service("books").await })
        .unwrap();
    wait_for(
        "books' instance gone",
        START,
        || host.instance_dirs().is_empty(),
        || show(&host),
    );
    host.api(|c| async move { c.delete_volume("ledger").await })
        .unwrap();
    wait_for(
        "the volume's mount, loop device, image and directory gone",
        USAGE,
        || {
            !mounted(&mountpoint)
                && loops_of(&image).is_empty()
                && !image.exists()
                && !mountpoint.exists()
        },
        || {
            format!(
                "mounted {} loops {:?} image {} dir {}",
                mounted(&mountpoint),
                loops_of(&image),
                image.exists(),
                mountpoint.exists()
            )
        },
    );
    assert!(!agent.join("volume-objects/ledger.json").exists());
}

/// `tugboat ARGS` as a user runs it: whether it succeeded, and what it printed.
fn cli(host: &TestHost, args: &[&str]) -> (bool, String) {
    host.cli_says(args)
}

fn plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/volume-plugins/dir.sh")
}

#[test]
fn an_exec_plugin_is_called_through_its_lifecycle_and_an_unmountable_nfs_volume_says_why() {
    skip_unless_possible!("an_exec_plugin");
    if lacks(
        "jq",
        "an_exec_plugin",
        "the example plugin reads its JSON with it",
    ) {
        return;
    }
    let mut host = TestHost::new();
    let base = host.dir.join("shared");
    let spec = host.dir.join("plugin.yaml");
    std::fs::write(
        &spec,
        format!(
            r#"
volumes:
  orders: {{driver: exec, options: {{plugin: {plugin}, base: {base}}}}}
  archive: {{driver: nfs, options: {{server: 192.0.2.1, path: /export, timeout_seconds: "3"}}}}
services:
  ledger:
    image: shop/catalog:1
    volumes:
      - {{type: volume, source: orders, target: /data}}
    stop: {{grace_seconds: 1}}
  archiver:
    image: shop/catalog:1
    volumes:
      - {{type: volume, source: archive, target: /data}}
    restart: {{policy: never}}
    stop: {{grace_seconds: 1}}
"#,
            plugin = plugin().display(),
            base = base.display()
        ),
    )
    .unwrap();
    host.start_up(&spec);
    let calls = || std::fs::read_to_string(base.join("calls.log")).unwrap_or_default();
    let show = |host: &TestHost| {
        format!(
            "{:#?}\ncalls:\n{}",
            host::instances(host),
            std::fs::read_to_string(base.join("calls.log")).unwrap_or_default()
        )
    };
    wait_for(
        "ledger running on the plugin's volume",
        START,
        || running(&host, "ledger").is_some(),
        || show(&host),
    );
    let id = running(&host, "ledger").unwrap().id;
    assert!(
        calls().starts_with("create orders local\nmount orders local\n"),
        "{}",
        calls()
    );
    let (code, said) = exec(&host, &id, "echo paid > /data/order-1 && cat /data/order-1");
    assert_eq!((code, said.trim()), (0, "paid"));
    assert_eq!(
        std::fs::read_to_string(base.join("orders/order-1")).unwrap(),
        "paid\n",
        "the container wrote into the plugin's directory"
    );
    wait_for(
        "the plugin's usage figures on the server",
        USAGE,
        || calls().contains("usage orders local"),
        || show(&host),
    );

    // A snapshot of the plugin's volume, while ledger uses it: ledger is paused for it
    // (named in what the command says) and runs again after.
    let archive = host.dir.join("orders.tar");
    let archive_arg = archive.display().to_string();
    let (ok, said) = cli(&host, &["volume", "snapshot", "orders", "-f", &archive_arg]);
    assert!(ok, "{said}");
    assert!(
        said.contains("paused while archived") && said.contains(&id),
        "{said}"
    );
    let (code, said) = exec(
        &host,
        &id,
        "echo after > /data/order-2 && cat /data/order-1",
    );
    assert_eq!(
        (code, said.trim()),
        (0, "paid"),
        "ledger runs after the snapshot"
    );

    // The NFS volume cannot be mounted here (no such server, or no NFS in this kernel): the
    // instance says why, naming the volume, and nothing is left mounted.
    wait_for(
        "archiver's status naming its volume",
        START,
        || host::message_of(&host, "archiver").contains("volume archive:"),
        || show(&host),
    );
    let why = host::message_of(&host, "archiver");
    assert!(
        why.contains("did not answer in 3 s") || why.contains("no nfs4 file system"),
        "{why}"
    );
    assert!(!mounted(&host.dir.join("agent/volume-mounts/archive")));
    // Its snapshot and restore say the same, naming the volume; no archive is left, nothing
    // is mounted.
    let nfs_tar = host.dir.join("archive.tar");
    let nfs_arg = nfs_tar.display().to_string();
    let (ok, said) = cli(&host, &["volume", "snapshot", "archive", "-f", &nfs_arg]);
    assert!(!ok, "{said}");
    assert!(said.contains("volume archive:"), "{said}");
    assert!(
        said.contains("did not answer in 3 s") || said.contains("no nfs4 file system"),
        "{said}"
    );
    assert!(!nfs_tar.exists() && !host.dir.join("archive.tar.partial").exists());
    let (ok, said) = cli(
        &host,
        &[
            "volume",
            "restore",
            "archive",
            "-i",
            &archive_arg,
            "--force",
        ],
    );
    assert!(!ok, "{said}");
    assert!(said.contains("volume archive"), "{said}");
    assert!(!mounted(&host.dir.join("agent/volume-mounts/archive")));

    // Bad volumes are refused, naming the field, and make nothing.
    for (config, field) in [
        (
            serde_json::json!({"driver": "ceph"}),
            "unknown variant `ceph`",
        ),
        (
            serde_json::json!({"size": "1024"}),
            "size: `1024` has no unit",
        ),
        (
            serde_json::json!({"driver": "nfs", "options": {"path": "/x"}}),
            "options.server",
        ),
        (serde_json::json!({"driver": "exec"}), "options.plugin"),
    ] {
        let body = serde_json::json!({"name": "bad", "config": config});
        let e = host.api(|c| async move {
            match serde_json::from_value::<tugboat::wire::VolumeRequest>(body) {
                Ok(request) => c
                    .create_volume(&request)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        });
        let e = e.unwrap_err();
        assert!(e.contains(field), "{e}");
    }
    let names: Vec<String> = host
        .api(|c| async move { c.volumes().await })
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["archive", "orders"]);

    // The services gone and the volume removed: unmount, then remove, are called, and
    // the plugin's directory goes.
    for s in ["ledger", "archiver"] {
        host.api(|c| async move { c.delete_service(s).await })
            .unwrap();
    }
    wait_for(
        "the instances gone",
        START,
        || host.instance_dirs().is_empty(),
        || show(&host),
    );
    // No instance uses the plugin's volume now: a restore with --force puts the snapshot
    // back through the plugin's mount (order-2, written after it, goes; order-1 is back).
    std::fs::write(base.join("orders/order-1"), b"changed\n").unwrap();
    let (ok, said) = cli(
        &host,
        &["volume", "restore", "orders", "-i", &archive_arg, "--force"],
    );
    assert!(ok, "{said}");
    assert_eq!(
        std::fs::read_to_string(base.join("orders/order-1")).unwrap(),
        "paid\n",
        "{said}"
    );
    assert!(!base.join("orders/order-2").exists(), "{said}");
    for v in ["orders", "archive"] {
        host.api(|c| async move { c.delete_volume(v).await })
            .unwrap();
    }
    wait_for(
        "the plugin's unmount and remove",
        USAGE,
        || calls().contains("unmount orders local\n") && calls().contains("remove orders local\n"),
        || show(&host),
    );
    wait_for(
        "the volume's directory removed by the plugin",
        USAGE,
        || !base.join("orders").exists(),
        || show(&host),
    );
    let agent = host.dir.join("agent");
    wait_for(
        "the node's records of both volumes gone",
        USAGE,
        || {
            !agent.join("volume-objects/orders.json").exists()
                && !agent.join("volume-objects/archive.json").exists()
        },
        || show(&host),
    );
}

/// Two agents (a, b) and a server on a host of its own (s), on a LAN of namespaces
/// (192.168.216.0/24 inside them only). The plugin's base directory is on the machine's
/// disk, which every "host" shares: the shared storage a real cluster has on NFS or Ceph.
#[test]
fn a_service_on_a_shared_volume_moves_with_its_data_when_its_node_dies() {
    skip_unless_possible!("a_service_on_a_shared_volume");
    if lacks(
        "jq",
        "a_service_on_a_shared_volume",
        "the example plugin reads its JSON with it",
    ) {
        return;
    }
    let TwoNodes { lan, mut hosts, s } = host::server_and_two_agents("192.168.216", "10.88", START);
    let show = |s: &TestHost| format!("{:#?}", host::instances(s));
    let base = s.dir.join("shared");
    let text = format!(
        r#"
volumes:
  orders:
    driver: exec
    access: multi-node-writer
    options: {{plugin: {plugin}, base: {base}}}
services:
  ledger:
    image: shop/catalog:1
    volumes:
      - {{type: volume, source: orders, target: /data}}
    stop: {{grace_seconds: 1}}
"#,
        plugin = plugin().display(),
        base = base.display()
    );
    let spec = tugboat::spec::parse_spec_file("shared.yaml", &text, &|_| false).unwrap();
    s.api(|c| async move { c.apply(&spec).await.map(|_| ()) })
        .expect("apply");
    wait_for(
        "ledger running",
        START,
        || running(&s, "ledger").is_some(),
        || show(&s),
    );
    let first = running(&s, "ledger").unwrap();
    let (code, said) = exec(
        &s,
        &first.id,
        "echo order-1 >> /data/orders && cat /data/orders",
    );
    assert_eq!((code, said.trim()), (0, "order-1"), "{said}");

    // Its node dies: the link cut and its agent killed.
    let dead = first.node.clone().unwrap();
    lan.set_link(&dead, false);
    let i = if dead == "a" { 0 } else { 1 };
    hosts[i].kill_spawned(&format!("agent-{dead}"));
    wait_for(
        "ledger running on the other node",
        START,
        || running(&s, "ledger").is_some_and(|r| r.node.as_deref() != Some(dead.as_str())),
        || show(&s),
    );
    let second = running(&s, "ledger").unwrap();
    let (code, said) = exec(
        &s,
        &second.id,
        "echo order-2 >> /data/orders && cat /data/orders",
    );
    assert_eq!(
        (code, said.trim()),
        (0, "order-1\norder-2"),
        "the new instance on {:?} reads what the old one on {dead} wrote",
        second.node
    );
}
