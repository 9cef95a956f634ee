//! `tugboat build` through tugboat's own command line: the image lands in the store under
//! --data-dir, where `tugboat image` (and the agent) find it; errors name the line; `--oci`
//! writes a layout. (RUN steps and the rest are tested in build/tests.)

mod host;

use std::process::Command;

fn tugboat(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tugboat"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn build_stores_the_image_where_image_commands_look() {
    skip_unless_possible!("build_stores_the_image_where_image_commands_look");
    let dir = tempfile::Builder::new().prefix("tgbb").tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM scratch\nARG WHO\nCOPY hello.txt /hello.txt\nLABEL who=$WHO\nCMD [\"/hello.txt\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let oci = dir.path().join("layout");
    let ctx_s = ctx.to_str().unwrap();
    let out = tugboat(
        &data,
        &[
            "build",
            "-q",
            "-t",
            "test/cli:1",
            "--build-arg",
            "WHO=cli",
            "--oci",
            oci.to_str().unwrap(),
            ctx_s,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{}", text(&out));
    let inspect = tugboat(&data, &["image", "inspect", "test/cli:1"]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["config"]["cmd"], serde_json::json!(["/hello.txt"]));
    assert_eq!(v["config"]["labels"]["who"], "cli");
    assert!(oci.join("index.json").is_file());
    // Again: all from the cache, the same image.
    let again = tugboat(
        &data,
        &["build", "-t", "test/cli:1", "--build-arg", "WHO=cli", ctx_s],
    );
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), digest);
    assert!(
        text(&again).contains("0 layers built, 1 from cache"),
        "{}",
        text(&again)
    );
    // A bad file: non-zero exit, the error names the file and line.
    std::fs::write(ctx.join("Bad"), "FROM scratch\nCOPY missing /x\n").unwrap();
    let bad = tugboat(
        &data,
        &["build", "-f", ctx.join("Bad").to_str().unwrap(), ctx_s],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("Bad:2: COPY: source \"missing\" not found in context"),
        "{}",
        text(&bad)
    );
}

#[test]
fn ctrl_c_during_run_stops_the_step_and_leaves_nothing() {
    skip_unless_possible!("ctrl_c_during_run_stops_the_step_and_leaves_nothing");
    let tugboat = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tugboat"));
    if !tugboat.with_file_name("tug").is_file() {
        eprintln!(
            "SKIPPED ctrl_c_during_run_stops_the_step_and_leaves_nothing: no tug next to tugboat (cargo build -p tug-runtime --bin tug)"
        );
        return;
    }
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    let dir = tempfile::Builder::new().prefix("tgbb").tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    // pid 1 of its namespace ignores SIGINT: the builder must stop it itself.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"600\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(&tugboat)
        .arg("--data-dir")
        .arg(&data)
        .args(["build", "-q"])
        .arg(&ctx)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // If an assertion fails, the build (and its container) must not outlive the test.
    // Disarmed once the build is reaped (its pid could then be anyone's).
    struct StopGroup(Option<i32>);
    impl Drop for StopGroup {
        fn drop(&mut self) {
            let Some(pg) = self.0 else { return };
            let pg = nix::unistd::Pid::from_raw(pg);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGINT);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let mut stop = StopGroup(Some(child.id() as i32));
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(data.to_str().unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mounted() {
        assert!(Instant::now() < deadline, "the RUN step never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ctrl-C: SIGINT to the whole process group, as a terminal sends it.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            stop.0 = None;
            break s;
        }
        assert!(Instant::now() < deadline, "the build did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("interrupted"), "{err}");
    assert!(!mounted(), "the overlay is unmounted");
    let tmp: Vec<_> = std::fs::read_dir(data.join("build/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}
