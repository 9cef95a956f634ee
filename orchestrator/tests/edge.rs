//! Root tests of an edge node that runs without its server: `tugboat server` and `tugboat
//! agent` as separate processes in a network namespace of the test's own. With the server
//! killed, an agent that starts (after a crash, and after a simulated reboot that killed
//! every process of the node) runs what its disk says: it re-attaches to or restarts its
//! instances, restarts a killed container, and serves its services at their addresses,
//! all before any server answers. When the server returns, nothing runs twice.

mod host;

use host::{http_get, instances, shop_images, wait_for, TestHost};
use std::time::{Duration, Instant};
use tugboat::model::InstancePhase;

const START: Duration = Duration::from_secs(120);

const SPEC: &str = "\
services:
  catalog:
    image: shop/catalog:1
    replicas: 2
    ports:
      - {container: 80}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
";

fn start_server(host: &mut TestHost) {
    let dir = host.dir.join("server").display().to_string();
    #[rustfmt::skip]
    host.spawn("server", &["server", "--listen", host::API, "--insecure-no-auth",
                           "--insecure-plain-http", "--data-dir", &dir]);
}

fn start_agent(host: &mut TestHost) {
    let dir = host.dir.join("agent").display().to_string();
    let image = shop_images().join("oci/shop-catalog").display().to_string();
    #[rustfmt::skip]
    host.spawn("agent", &["agent", "--insecure-no-auth", "--addr", &format!("http://{}", host::API),
                          "--data-dir", &dir, "--node", "edge", "--import", &image]);
}

/// The instance ids the node runs, from its disk.
fn local_ids(host: &TestHost) -> Vec<String> {
    let mut ids: Vec<String> = host
        .instance_dirs()
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// The container pid of an instance, while its monitor says it runs.
fn container_pid(host: &TestHost, id: &str) -> Option<i32> {
    let path = host
        .dir
        .join("agent/instances")
        .join(id)
        .join("monitor.json");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let pid = record["container_pid"].as_i64()? as i32;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

/// Does the catalog answer at its service address, from the node's host side?
fn catalog_answers(host: &TestHost, vip: &str) -> bool {
    let target = format!("{vip}:80");
    host.in_netns(move || http_get(&target, "/products"))
        .is_ok_and(|t| t.contains(r#""served_by":"catalog-"#))
}

fn show(host: &TestHost) -> String {
    format!(
        "instances on disk: {:?}\nmonitors: {:?}\n--- said:\n{}",
        local_ids(host),
        host.monitor_pids(),
        host.output.lock().unwrap()
    )
}

#[test]
fn an_edge_node_runs_its_services_without_the_server_after_a_crash_and_a_reboot() {
    skip_unless_possible!(
        "an_edge_node_runs_its_services_without_the_server_after_a_crash_and_a_reboot"
    );
    let mut host = TestHost::new();
    start_server(&mut host);
    host.wait_for_output("server: tugboat server listening", START);
    start_agent(&mut host);
    let spec = tugboat::spec::parse_spec_file("edge.yaml", SPEC, &|_| false).unwrap();
    host.api(|c| async move { c.apply(&spec).await.map(|_| ()) })
        .expect("apply");
    wait_for(
        "both catalog instances ready",
        START,
        || {
            instances(&host)
                .iter()
                .filter(|i| i.phase == InstancePhase::Running && i.ready)
                .count()
                == 2
        },
        || show(&host),
    );
    let vip = host
        .api(|c| async move { c.services().await })
        .expect("services")
        .items
        .into_iter()
        .find_map(|s| s.address)
        .expect("the catalog's address")
        .to_string();
    wait_for(
        "the catalog at its address",
        START,
        || catalog_answers(&host, &vip),
        || show(&host),
    );
    let ids = local_ids(&host);
    assert_eq!(ids.len(), 2);

    // The uplink is gone (the server with it), then the agent crashes and starts again.
    host.kill_spawned("server");
    host.kill_spawned("agent");
    host.output.lock().unwrap().clear();
    start_agent(&mut host);
    host.wait_for_output("running the node's 2 instances from its disk", START);
    // A container killed now is restarted by the agent alone.
    let victim = ids[0].clone();
    let before = container_pid(&host, &victim).expect("the container runs");
    host.kill_container(&victim);
    wait_for(
        "the killed container to run again without the server",
        START,
        || container_pid(&host, &victim).is_some_and(|pid| pid != before),
        || show(&host),
    );
    wait_for(
        "the catalog at its address without the server",
        START,
        || catalog_answers(&host, &vip),
        || show(&host),
    );

    // A reboot while offline: every process of the node dies (agent, monitors,
    // containers), then only the agent starts.
    host.kill_spawned("agent");
    let mut pids: Vec<i32> = host.monitor_pids();
    pids.extend(ids.iter().filter_map(|id| container_pid(&host, id)));
    for pid in &pids {
        // SAFETY: processes of this test's node (its monitors and containers).
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    wait_for(
        "every process of the node gone",
        START,
        || {
            pids.iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        },
        || show(&host),
    );
    assert!(
        !catalog_answers(&host, &vip),
        "nothing answers after the power cut"
    );
    // What a power cut can leave of an instance being made: its directory, with its record
    // not yet on the disk (empty). The agent cannot run it, and removes it once the server
    // says it is not this node's.
    let torn = host.dir.join("agent/instances/torn-0a1b2-c3d4e");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("instance.json"), "").unwrap();
    std::fs::write(torn.join("netns"), "").unwrap();
    host.output.lock().unwrap().clear();
    let booted = Instant::now();
    start_agent(&mut host);
    wait_for(
        "both containers and the catalog's address back without the server",
        START,
        || ids.iter().all(|id| container_pid(&host, id).is_some()) && catalog_answers(&host, &vip),
        || show(&host),
    );
    eprintln!(
        "offline reboot: both instances run and the service answers {:.1} s after the agent started",
        booted.elapsed().as_secs_f64()
    );
    let local: Vec<String> = local_ids(&host)
        .into_iter()
        .filter(|id| !id.starts_with("torn-"))
        .collect();
    assert_eq!(local, ids, "the same instances, no new ones");
    assert!(torn.exists(), "removed before the server said anything");

    // The server returns: the agent registers, reports, and nothing runs twice.
    start_server(&mut host);
    wait_for(
        "the node's two instances ready in the server's view",
        START,
        || {
            let list = instances(&host);
            list.len() == 2 && list.iter().all(|i| i.ready && ids.contains(&i.id))
        },
        || show(&host),
    );
    wait_for(
        "the torn instance's directory removed, saying why",
        START,
        || {
            !torn.exists()
                && host
                    .output
                    .lock()
                    .unwrap()
                    .contains("torn-0a1b2-c3d4e: its record on disk cannot be read")
        },
        || show(&host),
    );
    assert_eq!(local_ids(&host), ids, "the node's own two instances only");
    assert_eq!(host.monitor_pids().len(), 2, "one monitor per instance");
    // The small monitor next to tugboat, not the whole tugboat binary.
    let small = host::monitor_built();
    assert!(
        host.monitor_exes().iter().all(|exe| exe == small),
        "monitors run {:?}, not {}",
        host.monitor_exes(),
        small.display()
    );
    let containers = tug_runtime::Runtime::new(host.dir.join("agent/runtime"))
        .list()
        .unwrap();
    assert_eq!(containers.len(), 2, "one container per instance");
    assert!(catalog_answers(&host, &vip));
}
