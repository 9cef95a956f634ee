//! Root test: a named volume on a real agent keeps its data across a restart of the
//! instance's container and a rolling update of its service, and only `tugboat volume rm`
//! removes it, refused while an instance uses it.

mod host;

use host::{wait_for, TestHost};
use std::process::{Command, Output};
use std::time::Duration;
use tugboat::model::Instance;

const START: Duration = Duration::from_secs(120);

const SPEC: &str = r#"
services:
  keeper:
    image: shop/catalog:1
    replicas: 1
    command: [sh, -c, "hostname >> /data/starts; exec httpd -f -p 80 -h /www"]
    volumes:
      - {type: volume, source: notes, target: /data}
    restart: {policy: always}
    stop: {grace_seconds: 1}
"#;

fn keepers(host: &TestHost) -> Vec<Instance> {
    host.api(|c| async move { c.instances(Some("keeper")).await })
        .map(|l| l.items)
        .unwrap_or_default()
}

/// The hostnames the volume's file records, one per container start.
fn starts(host: &TestHost) -> Vec<String> {
    std::fs::read_to_string(host.dir.join("agent/volumes/notes/starts"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn volume_cli(host: &TestHost, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tugboat"))
        .arg("--data-dir")
        .arg(&host.dir)
        .arg("volume")
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_named_volume_outlives_restarts_and_updates_and_goes_only_by_volume_rm() {
    skip_unless_possible!(
        "a_named_volume_outlives_restarts_and_updates_and_goes_only_by_volume_rm"
    );
    let mut host = TestHost::new();
    let spec = host.dir.join("volumes.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    host.start_up(&spec);
    let show = |host: &TestHost| format!("{:#?}\nstarts: {:?}", keepers(host), starts(host));
    wait_for(
        "keeper to start once",
        START,
        || starts(&host).len() == 1,
        || show(&host),
    );
    let first = keepers(&host).remove(0);

    // The container killed from outside comes back under its policy, with the same data.
    host.kill_container(&first.id);
    wait_for(
        "keeper to start again",
        START,
        || starts(&host).len() == 2,
        || show(&host),
    );

    // A rolling update replaces the instance: the new one finds what the old ones wrote.
    host.api(|c| async move {
        let mut spec = c.describe_service("keeper").await.unwrap().service.spec;
        spec.env.insert("VERSION".into(), "2".into());
        c.replace_service("keeper", &spec).await.unwrap();
    });
    wait_for(
        "a new keeper instance to start on the same volume",
        START,
        || starts(&host).len() == 3 && keepers(&host).iter().all(|i| i.id != first.id),
        || show(&host),
    );
    let seen = starts(&host);
    let second = keepers(&host).remove(0);
    assert_eq!(seen[..2], [first.id.clone(), first.id.clone()], "{seen:?}");
    assert_eq!(seen[2], second.id, "{seen:?}");

    // In use: refused, naming an instance that uses it (the old one may still be going);
    // the data stays.
    let out = volume_cli(&host, &["rm", "--local", "notes"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("volume notes is in use by instance keeper-"),
        "{}",
        text(&out)
    );
    assert_eq!(starts(&host).len(), 3);
    let listed = volume_cli(&host, &["ls", "--local"]);
    assert!(text(&listed).contains("notes"), "{}", text(&listed));

    // Its service deleted: the volume stays until `volume rm`, which then removes it.
    host.api(|c| async move { c.delete_service("keeper").await })
        .unwrap();
    wait_for(
        "keeper's instances gone from the node",
        START,
        || host.instance_dirs().is_empty(),
        || show(&host),
    );
    assert_eq!(
        starts(&host).len(),
        3,
        "deleting the service kept the volume"
    );
    let out = volume_cli(&host, &["rm", "--local", "notes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!host.dir.join("agent/volumes/notes").exists());
    let out = volume_cli(&host, &["rm", "--local", "notes"]);
    assert!(
        !out.status.success() && text(&out).contains("volume notes: not found"),
        "{}",
        text(&out)
    );
}
