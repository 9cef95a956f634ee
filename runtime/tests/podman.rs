//! Root test: podman drives tug as its OCI runtime (`podman --runtime <tug>`): run, -it with a
//! terminal, exec, pause/unpause, stop, rm.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::show;

struct Podman {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    /// cgroup dirs podman makes for its own use that were not there before the test.
    cgroups_before: Vec<PathBuf>,
    /// Whether tug's default state root (podman gives tug no --root) was there before.
    run_tug_before: bool,
}

fn libpod_cgroups() -> Vec<PathBuf> {
    common::cgroup_mounts()
        .into_iter()
        .map(|(mp, _)| mp.join("libpod_parent"))
        .filter(|p| p.exists())
        .collect()
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::Builder::new().prefix("tugpod").tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for a in ["sh", "true", "echo", "sleep", "hostname", "tty", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        Podman {
            dir,
            rootfs,
            cgroups_before: libpod_cgroups(),
            run_tug_before: std::path::Path::new("/run/tug").exists(),
        }
    }

    fn base(&self) -> Vec<String> {
        let d = self.dir.path();
        let tug = common::tug_bin().display().to_string();
        [
            "--root",
            d.join("storage").to_str().unwrap(),
            "--runroot",
            d.join("run").to_str().unwrap(),
            "--tmpdir",
            d.join("tmp").to_str().unwrap(),
            "--runtime",
            tug.as_str(),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]
        .map(String::from)
        .to_vec()
    }

    fn run_opts(&self) -> Vec<String> {
        [
            "--network",
            "none",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            "--rootfs",
            self.rootfs.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(self.base())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("podman")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        // podman's storage may leave mounts under its dirs; they must go before the temp dir.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
            .filter(|m| m.starts_with(self.dir.path()))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        if !self.run_tug_before {
            // Empty once podman has removed its containers; left alone otherwise.
            let _ = std::fs::remove_dir("/run/tug");
        }
        // conmon processes leave their cgroup a moment after the container is removed.
        for p in libpod_cgroups() {
            if !self.cgroups_before.contains(&p) {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    let _ = std::fs::remove_dir(p.join("conmon"));
                    if std::fs::remove_dir(&p).is_ok() || std::time::Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }
}

fn skip() -> Option<&'static str> {
    if let Some(why) = common::skip() {
        return Some(why);
    }
    if Command::new("podman").arg("--version").output().is_err() {
        return Some("needs podman (tests/install-deps.sh installs it)");
    }
    None
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn podman_runs_containers_through_tug() {
    if let Some(why) = skip() {
        eprintln!("SKIP podman_runs_containers_through_tug: {why}");
        return;
    }
    let p = Podman::new();
    let opts = p.run_opts();
    let o: Vec<&str> = opts.iter().map(String::as_str).collect();

    // run --rm: output and exit code come through.
    let mut args = vec!["run", "--rm"];
    args.extend(&o);
    args.extend(["/bin/sh", "-c", "echo hello from tug; exit 4"]);
    let out = p.podman(&args);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert_eq!(text(&out), "hello from tug");

    // -it from a terminal: script(1) gives podman a pty; the container gets its own.
    let base = p.base().join(" ");
    let cmd = format!(
        "podman {base} run --rm -it {} /bin/sh -c 'tty; exit 5'",
        opts.join(" ")
    );
    // script's stdin stays open until the container is done: at end of input podman -it
    // would detach before the output came through.
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).unwrap();
        v
    });
    let status = child.wait().unwrap();
    drop(stdin);
    let out = Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: Vec::new(),
    };
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    assert!(text(&out).contains("/dev/pts/"), "{}", show(&out));

    // A detached container: exec, pause, unpause, stop, rm.
    let mut args = vec!["run", "-d", "--name", "tugpod"];
    args.extend(&o);
    args.extend(["/bin/sleep", "1000"]);
    let out = p.podman(&args);
    assert!(out.status.success(), "{}", show(&out));
    let out = p.podman(&[
        "exec",
        "tugpod",
        "sh",
        "-c",
        "echo exec $(cat /proc/1/cmdline | tr '\\0' ' ')",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out), "exec /bin/sleep 1000");
    let status =
        |p: &Podman| text(&p.podman(&["inspect", "--format", "{{.State.Status}}", "tugpod"]));
    assert!(p.podman(&["pause", "tugpod"]).status.success());
    assert_eq!(status(&p), "paused");
    assert!(p.podman(&["unpause", "tugpod"]).status.success());
    assert_eq!(status(&p), "running");
    let out = p.podman(&["stop", "--time", "1", "tugpod"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(status(&p), "exited");
    let out = p.podman(&["rm", "tugpod"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = p.podman(&["ps", "--all", "--quiet"]);
    assert_eq!(text(&out), "", "containers left: {}", show(&out));
    for (mp, _) in common::cgroup_mounts() {
        let parent = mp.join("libpod_parent");
        let left: Vec<_> = std::fs::read_dir(&parent)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with("libpod-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "cgroups left in {}: {left:?}",
            parent.display()
        );
    }
}
