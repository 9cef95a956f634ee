//! Root test of `tugboat volume snapshot|restore` (docs/volumes.md) on a server and two
//! agents, each in a network namespace of its own: files written through a container on
//! node a (a symlink, a mode, an owner) come back through a container on node b after a
//! snapshot, `volume rm` and a restore into a new volume placed with `--node b`; and each
//! bad input answers what a user can act on, leaving the volume as it was: an unknown
//! volume, a volume in use, a volume that holds data, a local volume on no node yet, a
//! corrupt or truncated archive, an entry that climbs out of the volume, an archive bigger
//! than a sized volume (ENOSPC), a read-only token, and a node that is not ready.

mod host;

use host::{exec_sh as exec, lacks, running, wait_for, TestHost, TwoNodes};
use std::path::Path;
use std::time::Duration;

const START: Duration = Duration::from_secs(120);

/// `tugboat ARGS` as a user runs it: whether it succeeded, and what it printed.
fn cli(host: &TestHost, args: &[&str]) -> (bool, String) {
    host.cli_says(args)
}

fn apply(host: &TestHost, text: &str) {
    let spec = tugboat::spec::parse_spec_file("test.yaml", text, &|_| false).unwrap();
    host.api(|c| async move { c.apply(&spec).await.map(|_| ()) })
        .expect("apply");
}

fn service(name: &str, volume: &str) -> String {
    format!(
        r#"
services:
  {name}:
    image: shop/catalog:1
    volumes:
      - {{type: volume, source: {volume}, target: /data}}
    stop: {{grace_seconds: 1}}
"#
    )
}

fn gone(host: &TestHost, service: &'static str) {
    host.api(|c| async move { c.delete_service(service).await })
        .unwrap();
    wait_for(
        &format!("{service}'s instances gone"),
        START,
        || {
            host.api(|c| async move { c.instances(Some(service)).await })
                .is_ok_and(|l| l.items.is_empty())
        },
        || format!("{:#?}", host::instances(host)),
    );
}

#[test]
fn a_volume_moves_between_nodes_through_snapshot_and_restore_and_bad_input_says_why() {
    skip_unless_possible!("a_volume_moves_between_nodes");
    if lacks(
        "mkfs.ext4",
        "a_volume_moves_between_nodes",
        "Debian's e2fsprogs",
    ) {
        return;
    }
    let TwoNodes { lan, mut hosts, s } = host::server_and_two_agents("192.168.217", "10.89", START);
    let show = |s: &TestHost| format!("{:#?}", host::instances(s));

    // A local volume on node a, written through a container: a file with a mode and an
    // owner, a symlink, a directory, and 20 MiB (more than the sized volume below holds).
    let (ok, said) = cli(&s, &["volume", "create", "pantry", "--node", "a"]);
    assert!(ok, "{said}");
    apply(&s, &service("writer", "pantry"));
    wait_for(
        "writer running",
        START,
        || running(&s, "writer").is_some(),
        || show(&s),
    );
    let writer = running(&s, "writer").unwrap();
    assert_eq!(writer.node.as_deref(), Some("a"));
    let (code, said) = exec(
        &s,
        &writer.id,
        "mkdir -p /data/shelf && echo jam > /data/shelf/jar && chmod 0640 /data/shelf/jar \
         && /bin/busybox chown 123:456 /data/shelf/jar && ln -s shelf/jar /data/link \
         && /bin/busybox dd if=/dev/zero of=/data/big bs=1M count=20 2>/dev/null && echo done",
    );
    assert_eq!((code, said.trim()), (0, "done"), "{said}");

    let archive = s.dir.join("pantry.tar");
    let archive_arg = archive.display().to_string();

    // In use: a restore is refused, naming the instance.
    std::fs::write(&archive, b"").unwrap();
    let (ok, said) = cli(
        &s,
        &["volume", "restore", "pantry", "-i", &archive_arg, "--force"],
    );
    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!(
            "volume pantry is in use by instance {}",
            writer.id
        )),
        "{said}"
    );

    // The snapshot, while the writer runs (the volume is mounted; a plain directory here).
    std::fs::remove_file(&archive).unwrap();
    let (ok, said) = cli(&s, &["volume", "snapshot", "pantry", "-f", &archive_arg]);
    assert!(ok, "{said}");
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(size > 20 << 20, "an archive of {size} bytes");

    // An unknown volume, named; no archive left behind.
    let missing = s.dir.join("missing.tar");
    let (ok, said) = cli(
        &s,
        &[
            "volume",
            "snapshot",
            "nope",
            "-f",
            &missing.display().to_string(),
        ],
    );
    assert!(!ok, "{said}");
    assert!(said.contains("volume `nope` not found"), "{said}");
    assert!(!missing.exists() && !s.dir.join("missing.tar.partial").exists());

    // The old volume goes.
    gone(&s, "writer");
    let (ok, said) = cli(&s, &["volume", "rm", "pantry"]);
    assert!(ok, "{said}");

    // A new local volume on no node yet: a restore must say where.
    let (ok, said) = cli(&s, &["volume", "create", "larder"]);
    assert!(ok, "{said}");
    let (ok, said) = cli(&s, &["volume", "restore", "larder", "-i", &archive_arg]);
    assert!(!ok, "{said}");
    assert!(said.contains("volume larder is on no node yet"), "{said}");
    assert!(said.contains("--node"), "{said}");

    // Restored on node b, which it then lives on.
    let (ok, said) = cli(
        &s,
        &[
            "volume",
            "restore",
            "larder",
            "-i",
            &archive_arg,
            "--node",
            "b",
        ],
    );
    assert!(ok, "{said}");
    assert!(said.contains("volume/larder restored on node b"), "{said}");
    let larder = s.api(|c| async move { c.volume("larder").await }).unwrap();
    assert_eq!(larder.node.as_deref(), Some("b"), "{larder:#?}");

    // Again: it holds data now, so without --force it is refused.
    let (ok, said) = cli(
        &s,
        &[
            "volume",
            "restore",
            "larder",
            "-i",
            &archive_arg,
            "--node",
            "b",
        ],
    );
    assert!(!ok, "{said}");
    assert!(said.contains("the volume is not empty"), "{said}");
    assert!(said.contains("--force"), "{said}");

    // A truncated archive and a corrupt one, even with --force: nothing half-restored.
    let bytes = std::fs::read(&archive).unwrap();
    let truncated = s.dir.join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let corrupt = s.dir.join("corrupt.tar");
    let mut garbage = bytes[..64 << 10].to_vec();
    garbage[..512].fill(b'x');
    std::fs::write(&corrupt, &garbage).unwrap();
    for bad in [&truncated, &corrupt] {
        let (ok, said) = cli(
            &s,
            &[
                "volume",
                "restore",
                "larder",
                "-i",
                &bad.display().to_string(),
                "--force",
            ],
        );
        assert!(!ok, "{}: {said}", bad.display());
        assert!(
            said.contains("corrupt or truncated"),
            "{}: {said}",
            bad.display()
        );
        assert!(said.contains("the volume is as before"), "{said}");
    }

    // Read through a container on node b: the same contents, modes, owner and link.
    apply(&s, &service("reader", "larder"));
    wait_for(
        "reader running",
        START,
        || running(&s, "reader").is_some(),
        || show(&s),
    );
    let reader = running(&s, "reader").unwrap();
    assert_eq!(reader.node.as_deref(), Some("b"));
    let (code, said) = exec(
        &s,
        &reader.id,
        "cat /data/shelf/jar; /bin/busybox stat -c '%a %u %g' /data/shelf/jar; \
         /bin/busybox readlink /data/link; cat /data/link; wc -c < /data/big; ls -a /data",
    );
    assert_eq!(code, 0, "{said}");
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            "jam",
            "640 123 456",
            "shelf/jar",
            "jam",
            "20971520",
            ".",
            "..",
            "big",
            "link",
            "shelf"
        ],
        "{said}"
    );
    gone(&s, "reader");

    // A sized volume smaller than the archive: ENOSPC, and the volume stays empty (a
    // restore without --force, which only an empty volume takes, then succeeds).
    let (ok, said) = cli(
        &s,
        &["volume", "create", "tin", "--size", "16Mi", "--node", "b"],
    );
    assert!(ok, "{said}");
    let (ok, said) = cli(&s, &["volume", "restore", "tin", "-i", &archive_arg]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("ENOSPC") && said.contains("no space"),
        "{said}"
    );
    assert!(said.contains("the volume is as before"), "{said}");
    // An entry that climbs out of the volume: refused, nothing written anywhere.
    let evil = s.dir.join("evil.tar");
    std::fs::write(&evil, escaping_archive("../escaped")).unwrap();
    let (ok, said) = cli(
        &s,
        &[
            "volume",
            "restore",
            "tin",
            "-i",
            &evil.display().to_string(),
        ],
    );
    assert!(!ok, "{said}");
    assert!(
        said.contains("archive entry `../escaped` would be written outside the volume"),
        "{said}"
    );
    let agent_b = hosts[1].dir.join("agent");
    assert!(!agent_b.join("volumes/escaped").exists());

    // A read-only token cannot read a volume's contents.
    let read = s
        .api(|c| async move {
            c.create_token(&tugboat::wire::TokenRequest {
                scope: tugboat::wire::TokenScope::Read,
                ttl_seconds: Some(600),
                description: "snapshot test, read".into(),
            })
            .await
        })
        .unwrap()
        .token;
    let reader_client = s.client(Some(read));
    let refused = s.in_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut out = vec![];
            reader_client
                .snapshot_volume("larder", &mut out)
                .await
                .map(|_| out.len())
        })
    });
    let e = refused.unwrap_err().to_string();
    assert!(
        e.contains("a read-only token reads no volume's contents"),
        "{e}"
    );

    let small = s.dir.join("small.tar");
    std::fs::write(&small, tiny_archive(&s.dir.join("tiny"))).unwrap();
    let (ok, said) = cli(
        &s,
        &[
            "volume",
            "restore",
            "tin",
            "-i",
            &small.display().to_string(),
        ],
    );
    assert!(ok, "the failed restore left something in tin: {said}");
    // Not mounted after: no instance uses it.
    let mountpoint = hosts[1].dir.join("agent/volumes/tin");
    wait_for(
        "tin unmounted after its restore",
        Duration::from_secs(10),
        || !mounted(&mountpoint),
        || mountpoint.display().to_string(),
    );

    // No such volume and no node: named, with what to do.
    let small_arg = small.display().to_string();
    let (ok, said) = cli(&s, &["volume", "restore", "crate", "-i", &small_arg]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("volume `crate` not found") && said.contains("--node"),
        "{said}"
    );
    // With --node a local volume is made there; a failed restore leaves no object behind,
    // a good one a volume on that node.
    let corrupt_arg = corrupt.display().to_string();
    let (ok, said) = cli(
        &s,
        &[
            "volume",
            "restore",
            "crate",
            "-i",
            &corrupt_arg,
            "--node",
            "b",
        ],
    );
    assert!(!ok && said.contains("corrupt or truncated"), "{said}");
    let e = s
        .api(|c| async move { c.volume("crate").await })
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let (ok, said) = cli(
        &s,
        &[
            "volume", "restore", "crate", "-i", &small_arg, "--node", "b",
        ],
    );
    assert!(ok, "{said}");
    let made = s.api(|c| async move { c.volume("crate").await }).unwrap();
    assert_eq!(made.node.as_deref(), Some("b"), "{made:#?}");
    assert_eq!(
        std::fs::read_to_string(hosts[1].dir.join("agent/volumes/crate/note")).unwrap(),
        "small\n"
    );

    // Node a is not ready: a snapshot of a volume on it says so.
    let (ok, said) = cli(&s, &["volume", "create", "cellar", "--node", "a"]);
    assert!(ok, "{said}");
    lan.set_link("a", false);
    hosts[0].kill_spawned("agent-a");
    wait_for(
        "node a not ready",
        START,
        || {
            s.api(|c| async move { c.nodes().await }).is_ok_and(|l| {
                l.items
                    .iter()
                    .any(|n| n.name == "a" && n.status != tugboat::model::NodeStatus::Ready)
            })
        },
        || show(&s),
    );
    let out = s.dir.join("cellar.tar");
    let (ok, said) = cli(
        &s,
        &[
            "volume",
            "snapshot",
            "cellar",
            "-f",
            &out.display().to_string(),
        ],
    );
    assert!(!ok, "{said}");
    assert!(
        said.contains("volume cellar is on node a, which is not ready"),
        "{said}"
    );
    assert!(!out.exists());
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

/// A valid archive of one small file, made by the snapshot code itself.
fn tiny_archive(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("note"), b"small\n").unwrap();
    let mut out = vec![];
    tugboat::agent::volume_archive::pack(dir, &mut out).unwrap();
    out
}

/// A ustar archive of one regular file named `name` (written by hand: tar's own builder
/// refuses such names), with its end-of-archive blocks.
fn escaping_archive(name: &str) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let mut field =
        |at: usize, text: &str| header[at..at + text.len()].copy_from_slice(text.as_bytes());
    field(100, "0000644\0");
    field(108, "0000000\0");
    field(116, "0000000\0");
    field(124, "00000000004\0");
    field(136, "00000000000\0");
    field(156, "0");
    field(257, "ustar\0");
    field(263, "00");
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|b| *b as u32).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    let mut data = b"evil".to_vec();
    data.resize(512, 0);
    out.extend_from_slice(&data);
    out.extend_from_slice(&[0; 1024]);
    out
}

/// A writer that never stops: each turn appends its counter to `a-first`, then to
/// `z-last`; between the two in the archive's order lies 8 MiB (`m-middle`), so an archive
/// written while it runs finds `z-last` well ahead of `a-first`.
const COUNTER: &str = r#"
volumes:
  tally: {driver: local}
services:
  counter:
    image: shop/catalog:1
    command: [sh, -c, "dd if=/dev/zero of=/data/m-middle bs=1M count=8 2>/dev/null; i=0; while :; do i=$((i+1)); echo $i >> /data/a-first; echo $i >> /data/z-last; done"]
    volumes:
      - {type: volume, source: tally, target: /data}
    stop: {grace_seconds: 1}
"#;

/// The counters of a file of the archive at `path`: every line whole and a number, and
/// they count 1, 2, 3... (a torn or missing line fails).
fn counted(files: &std::collections::HashMap<String, Vec<u8>>, name: &str) -> u64 {
    let text = String::from_utf8(files[name].clone()).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{name} ends with a torn line: {:?}",
        &text[text.len().saturating_sub(20)..]
    );
    let mut n = 0;
    for line in text.lines() {
        n += 1;
        assert_eq!(
            line.parse::<u64>().ok(),
            Some(n),
            "{name}: line {n} is {line:?}"
        );
    }
    n
}

fn archived_files(archive: &Path) -> std::collections::HashMap<String, Vec<u8>> {
    let mut files = std::collections::HashMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut data = vec![];
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        files.insert(name, data);
    }
    files
}

#[test]
fn a_snapshot_is_point_in_time_its_writer_paused_and_running_again_after() {
    skip_unless_possible!("a_snapshot_is_point_in_time");
    let mut host = TestHost::new();
    let spec = host.dir.join("counter.yaml");
    std::fs::write(&spec, COUNTER).unwrap();
    host.start_up(&spec);
    let show = |h: &TestHost| format!("{:#?}", host::instances(h));
    let lines = |name: &str| {
        std::fs::read(host.dir.join("agent/volumes/tally").join(name))
            .map(|b| b.iter().filter(|c| **c == b'\n').count())
            .unwrap_or(0)
    };
    // (Its files may grow before the agent reports it running: both are waited for.)
    wait_for(
        "the counter running and writing",
        START,
        || running(&host, "counter").is_some() && lines("z-last") > 2000,
        || show(&host),
    );
    let writer = running(&host, "counter").unwrap();

    // Without the pause: the archive is not a point in time (z-last is read well after
    // a-first). Shown, not asserted: how far apart depends on the machine.
    let loose = host.dir.join("loose.tar");
    let (ok, said) = cli(
        &host,
        &[
            "volume",
            "snapshot",
            "tally",
            "-f",
            &loose.display().to_string(),
            "--no-freeze",
        ],
    );
    assert!(ok, "{said}");
    assert!(!said.contains("paused"), "{said}");
    // (Every entry readable: a file that grew while it was archived is cut at its size.)
    let files = archived_files(&loose);
    let newlines = |name: &str| files[name].iter().filter(|c| **c == b'\n').count();
    let (a, z) = (newlines("a-first"), newlines("z-last"));
    println!("a snapshot with --no-freeze: a-first {a} lines, z-last {z}");

    // By default the writer is paused while the archive is written: both files hold the
    // same turns (z-last at most one behind a-first, never ahead), each line whole.
    let archive = host.dir.join("tally.tar");
    let (ok, said) = cli(
        &host,
        &[
            "volume",
            "snapshot",
            "tally",
            "-f",
            &archive.display().to_string(),
        ],
    );
    assert!(ok, "{said}");
    assert!(
        said.contains("paused while archived") && said.contains(&writer.id),
        "{said}"
    );
    let files = archived_files(&archive);
    let (a, z) = (counted(&files, "a-first"), counted(&files, "z-last"));
    assert!(
        a == z || a == z + 1,
        "not a point in time: a-first has {a} turns, z-last {z}"
    );
    assert_eq!(files["m-middle"].len(), 8 << 20);
    println!(
        "a point-in-time snapshot: a-first {a} lines, z-last {z}; {}",
        said.trim()
    );

    // A freeze that is neither true nor false is refused, naming the parameter; nothing is
    // paused (the writer keeps writing, below).
    let (status, said) = host.get_api("/v1/volumes/tally/archive?freeze=maybe");
    assert_eq!(status, 400, "{said}");
    assert!(said.contains("`freeze` is true or false"), "{said}");

    // The writer runs again: its files grow past what was archived.
    wait_for(
        "the counter writing again after the snapshot",
        START,
        || lines("z-last") as u64 > z + 1000,
        || show(&host),
    );
    let after = running(&host, "counter").expect("the counter is running");
    assert_eq!(after.id, writer.id, "the same instance, not a restart");
}
