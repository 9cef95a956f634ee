//! Root test: `tugboat logs` as a user reads it, in both log modes (a file per instance,
//! and a ring in the monitor's memory): every run's lines, `--timestamps` with each line's
//! time, `--previous` with only the run before the last restart (refused, with the reason,
//! before any restart), `--tail` on it, a service's instances prefixed, and a bad query
//! parameter named.

mod host;

use host::{wait_for, TestHost};
use std::process::Output;
use std::time::{Duration, SystemTime};
use tugboat::model::InstancePhase;

const START: Duration = Duration::from_secs(120);

const SPEC: &str = r#"
services:
  talker:
    image: shop/catalog:1
    command: [sh, -c, "echo run $(cat /proc/sys/kernel/random/uuid); echo to stderr >&2; exec sleep 1000"]
    stop: {grace_seconds: 1}
"#;

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The `run UUID` lines in `logs`.
fn runs(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.starts_with("run "))
        .map(str::to_string)
        .collect()
}

#[test]
fn logs_show_times_and_the_previous_run_in_both_log_modes() {
    skip_unless_possible!("logs_show_times_and_the_previous_run_in_both_log_modes");
    for mode in ["file", "ring"] {
        one_mode(mode);
    }
}

fn one_mode(mode: &str) {
    let mut host = TestHost::new();
    let spec = host.dir.join("logs.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let before = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    host.start_up_with(&spec, &["--log-mode", mode]);
    let cli = |args: &[&str]| host.cli(args);
    let show = |host: &TestHost| {
        format!(
            "{mode}: {:#?}\n{}",
            host::instances(host),
            host.output.lock().unwrap()
        )
    };
    let running = |host: &TestHost, restarts: u32| {
        host::instances(host).into_iter().find(|i| {
            i.service == "talker" && i.restarts >= restarts && i.phase == InstancePhase::Running
        })
    };
    wait_for(
        "talker running and printing",
        START,
        || running(&host, 0).is_some_and(|i| runs(&text(&cli(&["logs", &i.id]))).len() == 1),
        || show(&host),
    );
    let id = running(&host, 0).unwrap().id;

    // One run: its line and stderr's, in order; no previous run, and the error says so.
    let logs = text(&cli(&["logs", &id]));
    let first = runs(&logs);
    assert!(logs.contains("to stderr\n"), "{mode}: {logs}");
    let previous = cli(&["logs", "--previous", &id]);
    assert!(!previous.status.success(), "{mode}: {previous:?}");
    let said = String::from_utf8_lossy(&previous.stderr);
    assert!(
        said.contains(&format!("instance {id} has no previous run")),
        "{mode}: {said}"
    );

    // --timestamps: each line starts with its time, from this test's run, in order.
    let stamped = text(&cli(&["logs", "--timestamps", &id]));
    let times: Vec<&str> = stamped
        .lines()
        .map(|l| l.split_once(' ').expect("a time, then the line").0)
        .collect();
    assert_eq!(times.len(), logs.lines().count(), "{mode}: {stamped}");
    let after = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    for t in &times {
        humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{mode}: `{t}`: {e}"));
        assert!(
            before.as_str() <= *t && *t <= after.as_str(),
            "{mode}: {t} not in [{before}, {after}]"
        );
    }
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{mode}: {stamped}");
    let plain: Vec<&str> = stamped
        .lines()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    assert_eq!(plain, logs.lines().collect::<Vec<_>>(), "{mode}");

    // Killed: restarted. `logs` has both runs; `--previous` the first only.
    host.kill_container(&id);
    wait_for(
        "talker restarted and printing",
        START,
        || running(&host, 1).is_some() && runs(&text(&cli(&["logs", &id]))).len() == 2,
        || show(&host),
    );
    let both = runs(&text(&cli(&["logs", &id])));
    assert_eq!(both[0], first[0], "{mode}");
    assert_ne!(both[1], first[0], "{mode}: the second run printed a new id");
    let previous = cli(&["logs", "--previous", &id]);
    assert!(previous.status.success(), "{mode}: {previous:?}");
    assert_eq!(
        text(&previous),
        format!("{}\nto stderr\n", first[0]),
        "{mode}"
    );
    let last = text(&cli(&["logs", "--previous", "--tail", "1", &id]));
    assert_eq!(last, "to stderr\n", "{mode}");
    // By service: each line prefixed with its instance.
    let by_service = text(&cli(&["logs", "-p", "-t", "talker"]));
    assert!(
        by_service.lines().count() == 2
            && by_service
                .lines()
                .all(|l| l.starts_with(&format!("[{id}] 20"))),
        "{mode}: {by_service}"
    );
    // Following the previous run makes no sense: refused by the command line.
    let follow = cli(&["logs", "--previous", "-f", &id]);
    assert!(!follow.status.success(), "{mode}");
    assert!(
        String::from_utf8_lossy(&follow.stderr).contains("cannot be used with"),
        "{mode}: {follow:?}"
    );
    // A bad parameter through the API: 400 naming it.
    let path = format!("/v1/instances/{id}/logs?timestamps=maybe");
    let bad = host
        .api(|c| async move {
            c.call::<serde_json::Value>(reqwest::Method::GET, &path, None)
                .await
        })
        .unwrap_err();
    assert_eq!(bad.status(), Some(400), "{mode}: {bad}");
    assert!(bad.to_string().contains("`timestamps`"), "{mode}: {bad}");
    assert!(host.stop_up(), "{mode}: tugboat up did not stop");
}
