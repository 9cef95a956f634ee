//! Root tests: bad input and faults on a real agent. The instance's status says why, in words.

mod host;

use host::{wait_for, TestHost};
use std::time::Duration;

const FAULTS: &str = r#"
services:
  ghost:
    image: shop/nothing:1
  nobind:
    image: shop/catalog:1
    volumes:
      - {type: bind, source: /nonexistent-tugboat-test/config, target: /config}
  taken:
    image: shop/catalog:1
    ports:
      - {container: 80, published: 9090}
  neverready:
    image: shop/catalog:1
    ports:
      - {container: 80}
    health:
      readiness: {http: {port: 80, path: /nope}, interval_seconds: 1}
    stop: {grace_seconds: 1}
  unlive:
    image: shop/catalog:1
    health:
      liveness: {http: {port: 80, path: /nope}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
  direct:
    image: shop/catalog:1
    ports:
      - {container: 80, published: 9191}
  quits:
    image: shop/catalog:1
    command: [sh, -c, "echo bye; exit 3"]
    restart: {policy: never}
"#;

#[test]
fn faults_are_reported_in_words() {
    skip_unless_possible!("faults_are_reported_in_words");
    let mut host = TestHost::new();
    let spec = host.dir.join("faults.yaml");
    std::fs::write(&spec, FAULTS).unwrap();
    // Something else already listens on host port 9090.
    let squatter = host.in_netns(|| std::net::TcpListener::bind("0.0.0.0:9090").unwrap());
    host.start_up(&spec);
    let expected = [
        ("ghost", "image shop/nothing:1 not found"),
        (
            "nobind",
            "volume source /nonexistent-tugboat-test/config does not exist",
        ),
        ("taken", "host port 9090/tcp is already in use"),
        ("neverready", "readiness probe: http"),
        ("unlive", "liveness probe failed"),
        ("quits", "exited with code 3; restart policy never gives up"),
    ];
    for (service, words) in expected {
        wait_for(
            &format!("{service}'s status to say `{words}`"),
            Duration::from_secs(120),
            || {
                host.api(|c| async move { c.instances(Some(service)).await })
                    .map(|l| l.items.iter().any(|i| i.message.contains(words)))
                    .unwrap_or(false)
            },
            || {
                let list = host.api(|c| async move { c.instances(None).await });
                format!(
                    "{:#?}\n{}",
                    list.map(|l| l
                        .items
                        .into_iter()
                        .map(|i| (i.id, i.phase, i.message))
                        .collect::<Vec<_>>()),
                    host.output.lock().unwrap()
                )
            },
        );
    }
    // Beside the faults, a host-mode published port works from the host.
    wait_for(
        "direct's published port 9191 to answer",
        Duration::from_secs(120),
        || {
            host.in_netns(|| host::http_get("127.0.0.1:9191", "/healthz"))
                .is_ok()
        },
        || host.output.lock().unwrap().clone(),
    );
    let never = host
        .api(|c| async move { c.instances(Some("neverready")).await })
        .unwrap();
    assert!(never.items.iter().all(|i| !i.ready));
    assert!(
        never.items[0].message.contains("status 404"),
        "{:?}",
        never.items[0].message
    );
    // A liveness probe that fails restarts the container in place.
    wait_for(
        "unlive to be restarted by its liveness probe",
        Duration::from_secs(120),
        || {
            host.api(|c| async move { c.instances(Some("unlive")).await })
                .map(|l| l.items.iter().any(|i| i.restarts >= 1))
                .unwrap_or(false)
        },
        || host.output.lock().unwrap().clone(),
    );
    // `up` keeps saying what it waits for, and why.
    let said = host.output.lock().unwrap().clone();
    assert!(
        said.contains("waiting: ") && said.contains("not found"),
        "{said}"
    );
    drop(squatter);
    assert!(host.stop_up(), "tugboat up stops on Ctrl-C");
}
