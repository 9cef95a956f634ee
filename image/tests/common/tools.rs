//! Test helpers around real tools: Debian's docker-registry on a loopback port, skopeo,
//! and a busybox OCI layout.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::layout::{layer_tar, write_layout, ImageSpec, Item};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The path of a tool tests need; a missing one fails the test (install-deps installs it).
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: run tests/install-deps.sh");
}

/// A docker-registry serving plain http on 127.0.0.1, killed (by its pid) on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let bin = tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("tugimg-reg")
            .tempdir()
            .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let mut reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(&reg.addr).is_ok() {
                break;
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!("docker-registry exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// Push an OCI layout's image (`oci:DIR:TAG`) to `repo:tag` here with skopeo.
    pub fn push(&self, layout: &Path, layout_tag: &str, repo_tag: &str, all: bool) {
        let mut cmd = Command::new(tool("skopeo"));
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if all {
            cmd.arg("--all");
        }
        cmd.arg(format!("oci:{}:{layout_tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr));
        run(&mut cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The busybox layer: /bin/busybox, applet links, and the dirs a container needs.
pub fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read(tool("busybox")).unwrap();
    let mut items = vec![
        Item::Dir("bin"),
        Item::File("bin/busybox", &busybox, 0o755),
        Item::Symlink("bin/sh", "busybox"),
        Item::Symlink("bin/true", "busybox"),
        Item::Symlink("bin/cat", "busybox"),
    ];
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        items.push(Item::Dir(d));
    }
    layer_tar(&items)
}

/// An OCI layout at `dir` with a busybox image tagged `latest` plus a small second layer.
pub fn busybox_layout(dir: &Path) -> String {
    write_layout(
        dir,
        &ImageSpec {
            layers: vec![
                busybox_layer(),
                layer_tar(&[Item::File("etc/motd", b"hello from tug\n", 0o644)]),
            ],
            cmd: vec!["/bin/busybox", "true"],
            ..ImageSpec::default()
        },
    )
}

/// Say why a test does not run. Straight to stderr: libtest captures `eprintln!` of
/// passing tests, which would make a skip look like a pass.
pub fn skip(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {what}");
}
