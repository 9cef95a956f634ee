//! Root tests: `tugboat exec` through the server and the instance's agent, on a real
//! container under `tugboat up` in a network namespace of the test's own: output and exit
//! code, stdin (-i), a terminal (-t) with its size and resizes, a client that goes away, bad
//! input.

mod host;

use host::{wait_for, TestHost};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tugboat::execstream::{read_frame, write_frame, ExecRequest, Frame};

const SPEC: &str = r#"
services:
  box:
    image: shop/catalog:1
    replicas: 1
    ports:
      - {container: 80}
    stop: {grace_seconds: 1}
"#;

/// `tugboat up` with one instance; the host and the instance's id once it runs.
fn started() -> (TestHost, String) {
    let mut host = TestHost::new();
    let spec = host.dir.join("exec.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    host.start_up(&spec);
    let mut id = String::new();
    let last = std::cell::RefCell::new(String::new());
    wait_for(
        "the box instance to run",
        Duration::from_secs(120),
        || {
            let list = host.api(|c| async move { c.instances(Some("box")).await });
            match list.ok().and_then(|l| l.items.into_iter().next()) {
                Some(i) if i.phase == tugboat::model::InstancePhase::Running => {
                    id = i.id;
                    // Running is reported once the container is up; exec needs its pid.
                    let out = exec(&host, &[], &id, &["sh", "-c", "exit 0"], b"");
                    *last.borrow_mut() = show(&out);
                    out.status.success()
                }
                _ => false,
            }
        },
        || {
            format!(
                "{}\nlast exec: {}",
                host.output.lock().unwrap(),
                last.borrow()
            )
        },
    );
    (host, id)
}

fn token(host: &TestHost) -> String {
    std::fs::read_to_string(host.dir.join("server/token"))
        .unwrap()
        .trim()
        .to_string()
}

/// `tugboat exec FLAGS ID -- COMMAND` with `input` on its stdin.
fn exec(host: &TestHost, flags: &[&str], id: &str, command: &[&str], input: &[u8]) -> Output {
    let token = token(host);
    host.in_netns(|| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .env("TUGBOAT_CA", host.ca())
            .args(["--addr", host::API, "--token", &token, "exec"])
            .args(flags)
            .arg(id)
            .arg("--")
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    })
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Host processes whose command line is exactly `args`.
fn processes_running(args: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .as_deref()
                == Some(&want)
        })
        .collect()
}

/// A scripted exec stream opened with `request`: each step's frames are sent once what the
/// command wrote so far contains the step's text. Everything the agent sent.
fn session(
    host: &TestHost,
    id: &str,
    request: ExecRequest,
    steps: Vec<(&'static str, Vec<Frame>)>,
) -> Vec<Frame> {
    host.api(|c| async move {
        let stream = c.exec_stream(id, &request).await.unwrap();
        let (mut r, mut w) = tokio::io::split(stream);
        let mut got = vec![];
        let mut steps = steps.into_iter().peekable();
        let run = async {
            loop {
                while let Some((_, frames)) =
                    steps.next_if(|(text, _)| stdout_of(&got).contains(text))
                {
                    for f in &frames {
                        write_frame(&mut w, f).await.unwrap();
                    }
                }
                match read_frame(&mut r).await {
                    Ok(Some(f)) => {
                        let last = matches!(f, Frame::Exit(_) | Frame::Error(_));
                        got.push(f);
                        if last {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), run).await;
        got
    })
}

fn stdout_of(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Stdout(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn exec_through_the_api() {
    skip_unless_possible!("exec_through_the_api");
    let (host, id) = started();

    // -i: stdin goes in, stdout and stderr come back apart, and so does the exit code.
    let out = exec(
        &host,
        &["-i"],
        &id,
        &["sh", "-c", "cat; echo oops >&2; exit 4"],
        b"hello\nworld\n",
    );
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nworld\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // It runs as the container does: its hostname, environment and working directory.
    let out = exec(
        &host,
        &[],
        &id,
        &["sh", "-c", "hostname; echo $SHOP_SERVICE; pwd"],
        b"",
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text, format!("{id}\ncatalog\n/www\n"), "{}", show(&out));

    // -it: a shell on a terminal, through script(1) for a terminal of our own.
    let token = token(&host);
    let line = format!(
        "{} --addr {} --ca {} --token {token} exec -it {id} -- sh",
        env!("CARGO_BIN_EXE_tugboat"),
        host::API,
        host.ca().display()
    );
    let out = host.in_netns(|| {
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"busybox tty; echo $((6*7)); exit 5\n")
            .unwrap();
        let out = child.wait_with_output();
        drop(stdin);
        out.unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    assert!(
        text.contains("/dev/pts/") && text.contains("42"),
        "{}",
        show(&out)
    );

    // The terminal's size as asked, then as changed.
    let frames = session(
        &host,
        &id,
        ExecRequest {
            command: vec!["sh".into()],
            tty: true,
            stdin: true,
            rows: Some(33),
            cols: Some(101),
            ..Default::default()
        },
        vec![
            ("", vec![Frame::Stdin(b"busybox stty size\n".to_vec())]),
            (
                "33 101",
                vec![
                    Frame::Resize {
                        rows: 50,
                        cols: 120,
                    },
                    Frame::Stdin(b"busybox stty size; exit 0\n".to_vec()),
                ],
            ),
        ],
    );
    let text = stdout_of(&frames);
    assert!(text.contains("33 101"), "{frames:?}");
    assert!(text.contains("50 120"), "{frames:?}");
    assert_eq!(frames.last(), Some(&Frame::Exit(0)), "{frames:?}");

    // Bad input: a command that is not there, an instance that is not there.
    let out = exec(&host, &["-i"], &id, &["no-such-command"], b"");
    assert_eq!(out.status.code(), Some(126), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-command"),
        "{}",
        show(&out)
    );
    let out = exec(&host, &["-it"], "box-nosuch", &["sh"], b"");
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("box-nosuch"),
        "{}",
        show(&out)
    );

    // A client that goes away ends what it started, with or without a terminal.
    for (tty, marker) in [(false, "4242"), (true, "4243")] {
        let request = ExecRequest {
            command: vec!["sleep".into(), marker.into()],
            tty,
            stdin: true,
            ..Default::default()
        };
        let id = &id;
        host.api(|c| async move {
            let stream = c.exec_stream(id, &request).await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while processes_running(&["sleep", marker]).is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "sleep {marker} never ran"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(stream);
        });
        wait_for(
            &format!("sleep {marker} (tty {tty}) to end after its client left"),
            Duration::from_secs(20),
            || processes_running(&["sleep", marker]).is_empty(),
            || format!("{:?}", processes_running(&["sleep", marker])),
        );
    }
}

/// The addresses on the node's bridge (`tug-tugboat`) inside the test's namespace.
fn bridge_addresses(host: &TestHost) -> String {
    Command::new("ip")
        .args([
            "-n",
            &host.netns,
            "-4",
            "addr",
            "show",
            "dev",
            "tug-tugboat",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn a_deleted_services_address_leaves_the_bridge() {
    skip_unless_possible!("a_deleted_services_address_leaves_the_bridge");
    let (host, _id) = started();
    let address = host
        .api(|c| async move { c.services().await })
        .unwrap()
        .items
        .into_iter()
        .find(|s| s.name == "box")
        .and_then(|s| s.address)
        .expect("box has an address");
    let on_bridge = format!("inet {address}/32");
    wait_for(
        &format!("{address} on the bridge"),
        Duration::from_secs(30),
        || bridge_addresses(&host).contains(&on_bridge),
        || bridge_addresses(&host),
    );
    host.api(|c| async move { c.delete_service("box").await })
        .unwrap();
    wait_for(
        &format!("{address} off the bridge once box is deleted"),
        Duration::from_secs(30),
        || !bridge_addresses(&host).contains(&on_bridge),
        || bridge_addresses(&host),
    );
    // The node's own address on the bridge stays.
    assert!(
        bridge_addresses(&host).contains("inet 10.88."),
        "{}",
        bridge_addresses(&host)
    );
}
