//! Root tests of what a user sees (issue 19): `tugboat up` refusing a host whose cgroups are
//! hidden, giving up at its deadline with each reason said once, and failures reported as
//! such: an OOM kill with the memory limit, a crash loop with its restarts, exit and events.

mod host;

use host::{wait_for, TestHost};
use std::process::Command;
use std::time::Duration;

#[test]
fn up_in_ip_netns_exec_says_why_and_starts_nothing() {
    skip_unless_possible!("up_in_ip_netns_exec_says_why_and_starts_nothing");
    let host = TestHost::new();
    let spec = host.dir.join("one.yaml");
    std::fs::write(&spec, "services:\n  web: {image: shop/front:1}\n").unwrap();
    let data = host.dir.join("data");
    let out = Command::new("ip")
        .args(["netns", "exec", &host.netns])
        .arg(env!("CARGO_BIN_EXE_tugboat"))
        .arg("up")
        .arg("-f")
        .arg(&spec)
        .arg("--data-dir")
        .arg(&data)
        .arg("--listen")
        .arg(host::API)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up ran: {stderr}");
    assert!(stderr.contains("ip netns exec"), "{stderr}");
    assert!(
        stderr.contains("nsenter --net=/run/netns/NAME"),
        "says what to do: {stderr}"
    );
    // Nothing was started: no server store, no agent dir.
    assert!(!data.join("server").exists() && !data.join("agent").exists());
}

const NEVER_READY: &str = r#"
services:
  web:
    image: shop/nothing:1
    replicas: 2
  front:
    image: shop/front:1
"#;

#[test]
fn up_gives_up_at_its_deadline_with_each_reason_once() {
    skip_unless_possible!("up_gives_up_at_its_deadline_with_each_reason_once");
    let mut host = TestHost::new();
    let spec = host.dir.join("never.yaml");
    std::fs::write(&spec, NEVER_READY).unwrap();
    host.start_up_with(&spec, &["--deadline", "8s"]);
    let status = host
        .wait_up_exit(Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
                "up did not exit at its deadline:\n{}",
                host.output.lock().unwrap()
            )
        });
    // Its output threads may still be copying the last lines.
    std::thread::sleep(Duration::from_millis(300));
    let out = host.output.lock().unwrap().clone();
    assert!(!status.success(), "{out}");
    let reason = "tugboat up: web: image shop/nothing:1 not found";
    assert_eq!(out.matches(reason).count(), 1, "said once:\n{out}");
    assert!(
        out.contains("not every service was ready within 8s"),
        "{out}"
    );
    assert!(
        out.contains("  web: 0/2 ready: image shop/nothing:1 not found"),
        "{out}"
    );
    assert!(!out.contains("front: 0/1"), "front was ready: {out}");
    // It stopped what it started.
    assert!(
        host.instance_dirs().is_empty(),
        "{:?}",
        host.instance_dirs()
    );
    assert!(host.monitor_pids().is_empty());
}

const FAILING: &str = r#"
services:
  hog:
    image: shop/front:1
    # Doubles a string until the memory limit stops it.
    command: [sh, -c, "x=0123456789abcdef; while true; do x=$x$x; done"]
    resources:
      limits: {memory: 32Mi}
  crasher:
    image: shop/front:1
    command: [sh, -c, "echo bye; exit 3"]
"#;

#[test]
fn oom_kills_and_crash_loops_are_reported_as_such() {
    skip_unless_possible!("oom_kills_and_crash_loops_are_reported_as_such");
    let mut host = TestHost::new();
    let spec = host.dir.join("failing.yaml");
    std::fs::write(&spec, FAILING).unwrap();
    host.start_up_with(&spec, &["--deadline", "10m"]);
    let looping = |service: &str| {
        host::instances(&host)
            .into_iter()
            .find(|i| i.service == service && i.crash_looping && i.restarts >= 3)
    };
    for service in ["hog", "crasher"] {
        wait_for(
            &format!("{service} crash-looping"),
            Duration::from_secs(90),
            || looping(service).is_some(),
            || {
                format!(
                    "{:#?}\n{}",
                    host::instances(&host),
                    host.output.lock().unwrap()
                )
            },
        );
    }
    let hog = looping("hog").unwrap();
    let exit = hog.last_exit.clone().unwrap();
    assert_eq!(exit.reason, "OOMKilled", "{hog:#?}");
    assert_eq!(exit.message, "OOMKilled: memory limit 32Mi");
    assert_eq!(exit.code, Some(137));
    let crasher = looping("crasher").unwrap();
    let exit = crasher.last_exit.clone().unwrap();
    assert_eq!((exit.reason.as_str(), exit.code), ("Error", Some(3)));
    assert!(
        crasher
            .message
            .starts_with("crash-looping: exited with code 3"),
        "{crasher:#?}"
    );

    // What a user reads: the table's phase, describe, the events.
    let cli = |args: &[&str]| {
        let out = host.in_netns(|| {
            Command::new(env!("CARGO_BIN_EXE_tugboat"))
                .args(["--addr", host::API, "--data-dir"])
                .arg(host.dir.join("server"))
                .args(args)
                .env("HOME", &host.dir)
                .output()
                .unwrap()
        });
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = cli(&["get", "instances"]);
    assert!(table.contains("crash-looping"), "{table}");
    let described = cli(&["describe", "instance", &hog.id]);
    for wanted in [
        "Restarts:",
        "Last exit:",
        "code 137, OOMKilled: memory limit 32Mi",
        "Limits:      memory 32Mi",
        "Node:        local",
        "Address:     10.",
        "oom-killed",
        "crash-looping",
    ] {
        assert!(described.contains(wanted), "{wanted} in:\n{described}");
    }
    assert!(host.stop_up(), "up stopped cleanly");
}

#[test]
fn up_removes_the_services_an_earlier_run_left_that_its_file_does_not_name() {
    skip_unless_possible!(
        "up_removes_the_services_an_earlier_run_left_that_its_file_does_not_name"
    );
    let mut host = TestHost::new();
    let both = host.dir.join("both.yaml");
    std::fs::write(
        &both,
        "services:\n  front: {image: shop/front:1}\n  extra: {image: shop/catalog:1}\n",
    )
    .unwrap();
    host.start_up_with(&both, &[]);
    host.wait_for_output("Ctrl-C stops everything", Duration::from_secs(120));
    // A crash of `up` leaves both services in its store.
    host.kill_up();
    let one = host.dir.join("one.yaml");
    std::fs::write(&one, "services:\n  front: {image: shop/front:1}\n").unwrap();
    host.output.lock().unwrap().clear();
    host.start_up_with(&one, &[]);
    host.wait_for_output("Ctrl-C stops everything", Duration::from_secs(120));
    let out = host.output.lock().unwrap().clone();
    assert!(
        out.contains("tugboat up: removing service extra: it is not in"),
        "{out}"
    );
    assert!(!out.contains("removing service front"), "{out}");
    wait_for(
        "extra's instance gone",
        Duration::from_secs(30),
        || host::instances(&host).iter().all(|i| i.service != "extra"),
        || format!("{:#?}", host::instances(&host)),
    );
    let services = host.api(|c| async move { c.services().await.unwrap().items });
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["front"]);
    assert!(host.stop_up(), "up stopped cleanly");
}
