//! Root test of host autoscaling (issue 17): `tugboat server --node-pools` with a pool whose
//! provider is examples/providers/netns-agent.sh, which makes a simulated host (a network
//! namespace of the test's own, with a veth on the test's LAN bridge) running `tugboat
//! agent`. Host a runs only the server, so a service's instances are pending until the pool
//! adds a node; they are placed there. Once the service is gone and the node has been idle
//! for the (short) cool-down, it is drained, the provider's `remove` stops the agent and
//! deletes the namespace, and the node is gone from the cluster. The machine's root network
//! namespace is never changed.

mod host;

use host::{shop_images, wait_for, Lan, TestHost};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tugboat::model::InstancePhase;

const START: Duration = Duration::from_secs(120);

/// Whatever the provider left (a failed test): removed through the provider itself.
struct Leftovers {
    provider: PathBuf,
    dir: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for slot in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if let Ok(node) = std::fs::read_to_string(slot.path().join("node")) {
                let _ = std::process::Command::new(&self.provider)
                    .args(["remove", "burst", node.trim()])
                    .status();
            }
        }
    }
}

fn provider_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/providers/netns-agent.sh")
}

#[test]
fn a_pool_adds_a_node_for_pending_instances_and_removes_it_when_idle() {
    skip_unless_possible!("a_pool_adds_a_node_for_pending_instances_and_removes_it_when_idle");
    let images = shop_images();
    let mut a = TestHost::new();
    let lan = Lan::new(&[("a", &a, "192.168.215.1/24")]);
    let state = a.dir.join("provider");
    std::fs::create_dir_all(&state).unwrap();
    let prefix = format!("tgbprio{}-", std::process::id());
    // The server calls this wrapper: the example script with the test's settings.
    let wrapper = a.dir.join("provider.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport NETNS_AGENT_DIR={state} NETNS_AGENT_LAN={lan} NETNS_AGENT_NET=192.168.215 \
             NETNS_AGENT_SERVER=192.168.215.1:7480 NETNS_AGENT_PREFIX={prefix} TUGBOAT={tugboat} \
             NETNS_AGENT_ARGS='--import {image}'\nexec {script} \"$@\"\n",
            state = state.display(),
            lan = lan.hub.netns,
            tugboat = env!("CARGO_BIN_EXE_tugboat"),
            image = images.join("oci/shop-catalog").display(),
            script = provider_script().display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _leftovers = Leftovers {
        provider: wrapper.clone(),
        dir: state.clone(),
    };
    let pools = a.dir.join("pools.yaml");
    std::fs::write(
        &pools,
        format!(
            "pending_seconds: 1\nscale_down_seconds: 3\nscale_down_utilization: 50\n\
             provider_timeout_seconds: 60\nretry_seconds: 1\npools:\n  - name: burst\n    min: 0\n    max: 2\n    \
             provider: {}\n    labels: {{pool: burst}}\n    capacity: {{cpu: 1, memory: 1Gi}}\n",
            wrapper.display()
        ),
    )
    .unwrap();
    let server_dir = a.dir.join("server").display().to_string();
    #[rustfmt::skip]
    a.spawn("server", &["server", "--listen", "0.0.0.0:7480", "--data-dir", &server_dir,
                        "--node-pools", &pools.display().to_string()]);
    a.wait_for_output("server: tugboat server listening", START);
    let (token, hash) = host::join_token(&a, "node pool test");
    std::fs::write(state.join("join-token"), token).unwrap();
    std::fs::write(state.join("ca-hash"), hash).unwrap();

    let spec = tugboat::spec::parse_spec_file(
        "work.yaml",
        "services:\n  work:\n    image: shop/catalog:1\n    replicas: 2\n    stop: {grace_seconds: 1}\n    \
         resources:\n      requests: {memory: 300Mi}\n    placement:\n      node_labels: {pool: burst}\n",
        &|_| false,
    )
    .unwrap();
    let started = Instant::now();
    a.api(|c| async move { c.apply(&spec).await }).unwrap();
    let show = |a: &TestHost| {
        let events = a.api(|c| async move {
            c.call::<tugboat::wire::Listed<tugboat::model::Event>>(
                reqwest::Method::GET,
                "/v1/events",
                None,
            )
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        });
        let mut out =
            tugboat::output::instances_table(&host::instances(a), tugboat::model::now_ms(), false);
        for e in events {
            out.push_str(&format!(
                "{} {} {}: {}\n",
                e.name, e.reason, e.time_ms, e.message
            ));
        }
        out.push_str(&a.output.lock().unwrap());
        for slot in std::fs::read_dir(&state).into_iter().flatten().flatten() {
            out.push_str(
                &std::fs::read_to_string(slot.path().join("agent.log")).unwrap_or_default(),
            );
        }
        out
    };
    wait_for(
        "both instances ready on a node the pool added",
        START,
        || {
            let all = host::instances(&a);
            all.len() == 2
                && all.iter().all(|i| {
                    i.phase == InstancePhase::Running
                        && i.ready
                        && i.node.as_deref() == Some("burst-10")
                })
        },
        || show(&a),
    );
    let placed_after = started.elapsed();
    let nodes = a.api(|c| async move { c.nodes().await.unwrap().items });
    assert_eq!(nodes.len(), 1, "one node was enough for 2 x 300Mi");
    assert_eq!(
        nodes[0].labels.get("tugboat.pool").map(String::as_str),
        Some("burst")
    );
    assert_eq!(
        nodes[0].labels.get("pool").map(String::as_str),
        Some("burst")
    );
    assert!(Path::new(&format!("/run/netns/{prefix}10")).exists());

    a.api(|c| async move { c.delete_service("work").await })
        .unwrap();
    let idle_since = Instant::now();
    wait_for(
        "the idle node drained, removed by the provider and forgotten",
        START,
        || {
            a.api(|c| async move { c.nodes().await.map(|l| l.items.is_empty()).unwrap_or(false) })
                && !Path::new(&format!("/run/netns/{prefix}10")).exists()
                && !state.join("slot-10").exists()
        },
        || show(&a),
    );
    println!(
        "nodepools: instances placed {:.1} s after apply (a node added), node removed {:.1} s after it went idle (cool-down 3 s)",
        placed_after.as_secs_f64(),
        idle_since.elapsed().as_secs_f64()
    );
    let log = show(&a);
    assert!(
        log.contains("scale-up") && log.contains("node-removed"),
        "{log}"
    );
    drop(lan);
}
