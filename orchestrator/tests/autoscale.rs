//! Root test: a CPU-burning service under `tugboat up` scales out on its agents' real cgroup
//! numbers and back in after its window when the burning stops (issue 17). The burn is
//! bounded by a CPU limit, and switched by a file in a named volume.

mod host;

use host::{wait_for, TestHost};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

const SPEC: &str = r#"
services:
  burner:
    image: shop/catalog:1
    command: [sh, -c, "while :; do if [ -f /ctl/burn ]; then :; else sleep 0.2; fi; done"]
    resources:
      requests: {cpu: 100m}
      limits: {cpu: 200m}
    volumes: [{type: volume, source: ctl, target: /ctl}]
    autoscale:
      min: 1
      max: 3
      target: {cpu: 50%}
      scale_up: {max_step: 4, period_seconds: 1}
      scale_down: {stabilization_seconds: 4, max_step: 2, period_seconds: 1}
    stop: {grace_seconds: 1}
"#;

#[test]
fn a_burning_service_scales_out_and_back_in() {
    skip_unless_possible!("a_burning_service_scales_out_and_back_in");
    let mut host = TestHost::new();
    let spec = host.dir.join("autoscale.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    host.start_up(&spec);
    let replicas = |host: &TestHost| {
        host.api(|c| async move { c.describe_service("burner").await })
            .map(|d| (d.service.spec.replicas, d.autoscale, d.events))
            .ok()
    };
    let show = |host: &TestHost| format!("{:#?}", replicas(host));
    let flag = host.dir.join("agent/volumes/ctl/burn");
    wait_for(
        "the control volume",
        LIMIT,
        || flag.parent().unwrap().is_dir(),
        || show(&host),
    );
    std::fs::write(&flag, "").unwrap();
    wait_for(
        "burner scaled out to 3",
        LIMIT,
        || replicas(&host).is_some_and(|r| r.0 == 3),
        || show(&host),
    );
    let (_, last, events) = replicas(&host).unwrap();
    assert!(last.unwrap().contains("cpu"));
    let out = events
        .iter()
        .find(|e| e.reason == "autoscaled")
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        out.starts_with("1 -> 3 replicas: cpu ") && out.ends_with("of request (target 50%)"),
        "{out}"
    );
    std::fs::remove_file(&flag).unwrap();
    wait_for(
        "burner back to 1",
        LIMIT,
        || replicas(&host).is_some_and(|r| r.0 == 1),
        || show(&host),
    );
    assert!(host.stop_up());
}
