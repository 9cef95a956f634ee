//! A host for root tests of the agent: a network namespace of the test's own (`tgb<pid>x<n>`),
//! a data dir, and `tugboat up` (or a separate `tugboat server` and `tugboat agent`, see
//! [`TestHost::spawn`]) running inside that namespace. Everything the test makes is removed
//! on drop: the processes, the monitors they started, mounts under the data dir,
//! the instances' cgroups, the namespace (and with it the veths and routes in it).
#![allow(dead_code)]

use std::io::{BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;

pub mod shopper;

pub const API: &str = "127.0.0.1:7480";
pub const SHOP: &str = "127.0.0.1:8080";

/// Why this machine cannot run the test, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (namespaces, cgroups, mounts)".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs busybox-static (tests/install-deps.sh)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs iproute2 to make the test's network namespace".into());
    }
    None
}

#[macro_export]
macro_rules! skip_unless_possible {
    ($name:expr) => {
        if let Some(reason) = host::skip_reason() {
            eprintln!("SKIPPED {}: {}", $name, reason);
            return;
        }
    };
}

/// The shop's images, built once per test run with `tugboat build` (examples/shop/build.sh)
/// as OCI layouts under `<out>/oci/shop-<service>`.
pub fn shop_images() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shop-images");
        let tugboat = PathBuf::from(env!("CARGO_BIN_EXE_tugboat"));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // RUN steps need the `tug` binary next to tugboat; `cargo test -p tugboat` builds
        // only tugboat's own binaries.
        if !tugboat.with_file_name("tug").is_file() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .args(["build", "-q", "-p", "tug-runtime", "--bin", "tug"])
                .current_dir(&workspace);
            if tugboat.parent().and_then(|d| d.file_name()) == Some("release".as_ref()) {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build for tug");
            assert!(
                status.success(),
                "cargo build -p tug-runtime --bin tug failed"
            );
        }
        let done = Command::new("bash")
            .arg(workspace.join("examples/shop/build.sh"))
            .arg("--data-dir")
            .arg(out.join("data"))
            .arg("--oci")
            .arg(out.join("oci"))
            .env("TUGBOAT", &tugboat)
            .output()
            .expect("run examples/shop/build.sh");
        assert!(
            done.status.success(),
            "examples/shop/build.sh failed: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        out
    })
}

pub fn shop_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop.yaml")
}

/// The agent runs `tugboat-monitor` from next to its own executable (else `tugboat monitor`).
/// `cargo test -p tugboat` builds only tugboat's binaries: the monitor is built here, once per
/// test run (a no-op when it is current), so the tests run the monitor users run.
pub fn monitor_built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tugboat = PathBuf::from(env!("CARGO_BIN_EXE_tugboat"));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "-q",
                "-p",
                "tugboat-monitor",
                "--bin",
                "tugboat-monitor",
            ])
            .current_dir(&workspace);
        if tugboat.parent().and_then(|d| d.file_name()) == Some("release".as_ref()) {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build for tugboat-monitor");
        assert!(status.success(), "cargo build -p tugboat-monitor failed");
        let monitor = tugboat.with_file_name("tugboat-monitor");
        assert!(monitor.is_file(), "{} was not built", monitor.display());
        monitor
    })
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub struct TestHost {
    pub netns: String,
    pub dir: PathBuf,
    ns_file: std::fs::File,
    up: Option<Child>,
    /// Other `tugboat` processes in the namespace (server, agent), by name.
    procs: Vec<(String, Child)>,
    pub output: Arc<Mutex<String>>,
}

/// Runs a setup command (`ip ...`), panicking with its stderr if it fails.
pub fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestHost {
    pub fn new() -> TestHost {
        monitor_built();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let netns = format!("tgb{}x{n}", std::process::id());
        run(&["ip", "netns", "add", &netns]);
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        let ns_file = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
        let dir = PathBuf::from(format!("/tmp/{netns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestHost {
            netns,
            dir,
            ns_file,
            up: None,
            procs: vec![],
            output: Arc::new(Mutex::new(String::new())),
        }
    }

    /// Runs `f` on a thread inside the test's network namespace (sockets it makes and
    /// processes it starts live there).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.ns_file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns of this thread only, on a namespace fd we hold open.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Runs an async body against the API inside the namespace.
    pub fn api<T: Send, F: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce(ApiClient) -> F + Send,
    ) -> T {
        let token = std::fs::read_to_string(self.dir.join("server/token"))
            .map(|t| t.trim().to_string())
            .ok();
        let client = self.client(token);
        self.in_netns(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(f(client))
        })
    }

    /// A client of `up`'s server: over TLS with its CA once it has one.
    pub fn client(&self, token: Option<String>) -> ApiClient {
        match std::fs::read_to_string(self.ca()) {
            Ok(ca_pem) => ApiClient::with_tls(
                API,
                token,
                &tugboat::tls::ClientTls {
                    ca_pem,
                    identity_pem: None,
                },
            )
            .unwrap(),
            Err(_) => ApiClient::new(API, token),
        }
    }

    /// `tugboat --data-dir DIR/server --addr API ARGS...` in the namespace, as a user types
    /// it on the host `up` runs on.
    /// `tugboat ARGS` as a user runs it: whether it succeeded, and what it printed (stdout,
    /// then stderr).
    pub fn cli_says(&self, args: &[&str]) -> (bool, String) {
        let out = self.cli(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let server_dir = self.dir.join("server");
        self.in_netns(|| {
            Command::new(env!("CARGO_BIN_EXE_tugboat"))
                .arg("--data-dir")
                .arg(&server_dir)
                .args(["--addr", API])
                .args(args)
                .output()
                .unwrap()
        })
    }

    /// GET `path` from `up`'s server as the admin (TLS with its CA): the status and the
    /// body as text (status 0 and the error when it did not answer).
    pub fn get_api(&self, path: &str) -> (u16, String) {
        let token = std::fs::read_to_string(self.dir.join("server/token")).unwrap_or_default();
        let ca = std::fs::read(self.ca()).unwrap();
        let url = format!("https://{API}{path}");
        self.in_netns(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let http = reqwest::Client::builder()
                    .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                    .build()
                    .unwrap();
                match http.get(&url).bearer_auth(token.trim()).send().await {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                }
            })
        })
    }

    /// The cluster CA of `up`'s server.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("server/tls/ca.pem")
    }

    /// `tugboat up -f SPEC` in the namespace with the shop's images imported.
    pub fn start_up(&mut self, spec: &Path) {
        self.start_up_with(spec, &[]);
    }

    /// `tugboat up -f SPEC EXTRA...` in the namespace with the shop's images imported,
    /// returning at once (watch `output`, [`TestHost::wait_up_exit`]).
    pub fn start_up_with(&mut self, spec: &Path, extra: &[&str]) {
        let images = shop_images();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tugboat"));
        cmd.arg("up")
            .arg("-f")
            .arg(spec)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(API)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for svc in ["front", "catalog", "cart", "orders", "payments"] {
            cmd.arg("--import")
                .arg(images.join(format!("oci/shop-{svc}")));
        }
        let mut child = self.in_netns(|| cmd.spawn().expect("spawn tugboat up"));
        self.collect_output("", &mut child);
        self.up = Some(child);
    }

    /// Waits up to `limit` for `tugboat up` to exit by itself; its status, or None.
    pub fn wait_up_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.up.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.up = None;
                    return Some(status);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Copies the child's stdout and stderr, line by line, to `output` (after `prefix`).
    fn collect_output(&self, prefix: &str, child: &mut Child) {
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let out = self.output.clone();
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    out.lock().unwrap().push_str(&format!("{prefix}{line}\n"));
                }
            });
        }
    }

    /// `tugboat ARGS` in the namespace (a server, an agent), its output in `output` with
    /// `name: ` before each line; stopped (SIGINT, then SIGKILL) on drop. Its HOME is the
    /// host's dir, so no client config of the machine's user is read.
    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tugboat"));
        cmd.args(args)
            .env("HOME", &self.dir)
            .env_remove("TUGBOAT_ADDR")
            .env_remove("TUGBOAT_TOKEN")
            .env_remove("TUGBOAT_CONFIG")
            .env_remove("TUGBOAT_DATA_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.in_netns(|| cmd.spawn().expect("spawn tugboat"));
        self.collect_output(&format!("{name}: "), &mut child);
        self.procs.push((name.to_string(), child));
    }

    /// SIGKILL to the process of [`TestHost::spawn`] called `name` (a crash, a power cut).
    pub fn kill_spawned(&mut self, name: &str) {
        if let Some(i) = self.procs.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.procs.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the processes of [`TestHost::spawn`], last started first: SIGINT, then
    /// SIGKILL after 30 s. Returns whether all exited on SIGINT.
    pub fn stop_spawned(&mut self) -> bool {
        let mut clean = true;
        while let Some((_, mut child)) = self.procs.pop() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !exited {
                clean = false;
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        clean
    }

    pub fn wait_for_output(&self, text: &str, limit: Duration) {
        let shown = self.output.clone();
        wait_for(
            &format!("`{text}` from tugboat up"),
            limit,
            || shown.lock().unwrap().contains(text),
            || shown.lock().unwrap().clone(),
        );
    }

    pub fn up_pid(&self) -> Option<u32> {
        self.up.as_ref().map(|c| c.id())
    }

    /// kill -9 of `tugboat up` (server and agent).
    pub fn kill_up(&mut self) {
        if let Some(mut child) = self.up.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Ctrl-C to `tugboat up`; waits for it to exit (60 s, then SIGKILL).
    pub fn stop_up(&mut self) -> bool {
        let Some(mut child) = self.up.take() else {
            return true;
        };
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// GET through the shop's front (the ingress port) from inside the namespace.
    pub fn get(&self, path: &str) -> Result<String, String> {
        let path = path.to_string();
        self.in_netns(move || http_get(SHOP, &path))
    }

    /// The agent's instance directories.
    /// kill -9 of an instance's container (its init, from its monitor's record), as
    /// something outside tugboat would.
    pub fn kill_container(&self, id: &str) {
        // SAFETY: the container's init, started by this test's tugboat.
        unsafe { libc::kill(self.container_pid(id), libc::SIGKILL) };
    }

    /// The pid of an instance's container init, from its monitor's record.
    pub fn container_pid(&self, id: &str) -> i32 {
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                self.dir
                    .join("agent/instances")
                    .join(id)
                    .join("monitor.json"),
            )
            .unwrap(),
        )
        .unwrap();
        record["container_pid"].as_i64().unwrap() as i32
    }

    pub fn instance_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("agent/instances"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Live monitor processes of this host's instances (`tugboat-monitor ...` or `tugboat
    /// monitor ...` with an instance directory under this host's data dir).
    pub fn monitor_pids(&self) -> Vec<i32> {
        let mut pids = vec![];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let small = args
                .first()
                .is_some_and(|a| Path::new(a).file_name() == Some("tugboat-monitor".as_ref()));
            let subcommand = args.get(1).is_some_and(|a| a == "monitor");
            let ours = args
                .iter()
                .any(|a| a.starts_with(&format!("{}/", self.dir.display())));
            if (small || subcommand) && ours {
                pids.push(pid);
            }
        }
        pids
    }

    /// The executables of this host's live monitors (`/proc/PID/exe`).
    pub fn monitor_exes(&self) -> Vec<PathBuf> {
        self.monitor_pids()
            .iter()
            .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
            .collect()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let clean = self.stop_up() & self.stop_spawned();
        // Whatever is left of what this host started: monitors (and so containers), then
        // mounts, cgroups, the namespace.
        for pid in self.monitor_pids() {
            // SAFETY: signals to processes this test's tugboat started (matched by data dir).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let ids: Vec<String> = self
            .instance_dirs()
            .iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let runtime = tug_runtime::Runtime::new(self.dir.join("agent/runtime"));
        for id in &ids {
            let _ = runtime.delete(id, true);
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = format!("{}/", self.dir.display());
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        ours.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in ours {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        for id in &ids {
            for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
                let _ = std::fs::remove_dir(hierarchy.path().join("tug").join(id));
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
        if !clean && !std::thread::panicking() {
            panic!(
                "tugboat (up, server or agent) did not stop cleanly on Ctrl-C:\n{}",
                self.output.lock().unwrap()
            );
        }
    }
}

/// Every instance, as the server behind the host's API lists them (none when it does not
/// answer).
/// The status message of the first instance of `service` (empty when there is none).
pub fn message_of(host: &TestHost, service: &str) -> String {
    instances(host)
        .into_iter()
        .find(|i| i.service == service)
        .map(|i| i.message)
        .unwrap_or_default()
}

pub fn instances(host: &TestHost) -> Vec<tugboat::model::Instance> {
    host.api(|c| async move { c.instances(None).await.map(|l| l.items).unwrap_or_default() })
}

/// A plain HTTP/1.0 GET; the body of a 200 answer, else an error with what came back.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut conn =
        std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| format!("read {addr}{path}: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(format!(
            "GET {path}: {}",
            answer.lines().next().unwrap_or("no answer")
        ))
    }
}

/// Polls `done` every 100 ms; panics with `what` and `show()` after `limit`.
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    show: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n{}",
            show()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A LAN of test hosts: a bridge in a namespace of its own, and a veth from it into each
/// host (`eth1` there, with the given address), whose end on the bridge can be cut.
pub struct Lan {
    pub hub: TestHost,
    ends: std::collections::BTreeMap<String, String>,
}

impl Lan {
    /// `(name, host, address/prefix)` for each host.
    pub fn new(hosts: &[(&str, &TestHost, &str)]) -> Lan {
        let hub = TestHost::new();
        run(&[
            "ip", "-n", &hub.netns, "link", "add", "lan", "type", "bridge",
        ]);
        run(&["ip", "-n", &hub.netns, "link", "set", "lan", "up"]);
        let mut ends = std::collections::BTreeMap::new();
        for (name, host, addr) in hosts {
            let end = format!("to-{name}");
            #[rustfmt::skip]
            run(&["ip", "-n", &hub.netns, "link", "add", &end, "type", "veth",
                  "peer", "name", "eth1", "netns", &host.netns]);
            run(&["ip", "-n", &hub.netns, "link", "set", &end, "master", "lan"]);
            run(&["ip", "-n", &hub.netns, "link", "set", &end, "up"]);
            run(&["ip", "-n", &host.netns, "addr", "add", addr, "dev", "eth1"]);
            run(&["ip", "-n", &host.netns, "link", "set", "eth1", "up"]);
            ends.insert(name.to_string(), end);
        }
        Lan { hub, ends }
    }

    /// Cuts (or restores) the host's link to the bridge.
    pub fn set_link(&self, host: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        run(&[
            "ip",
            "-n",
            &self.hub.netns,
            "link",
            "set",
            &self.ends[host],
            state,
        ]);
    }
}

/// A join token (10 minutes) from the server `tugboat server` runs on `host`, and its CA's
/// hash: what `tugboat agent --join-token T --ca-hash H` takes.
pub fn join_token(host: &TestHost, description: &str) -> (String, String) {
    let description = description.to_string();
    let token = host
        .api(|c| async move {
            c.create_token(&tugboat::wire::TokenRequest {
                scope: tugboat::wire::TokenScope::Join,
                ttl_seconds: Some(600),
                description,
            })
            .await
        })
        .expect("a join token")
        .token;
    let ca = std::fs::read_to_string(host.ca()).expect("the server's CA");
    (token, tugboat::tls::hash_pem(&ca).unwrap())
}

/// Whether `program` is missing (then the test says SKIP with why).
pub fn lacks(program: &str, test: &str, why: &str) -> bool {
    let missing = Command::new(program).arg("-V").output().is_err();
    if missing {
        println!("SKIP {test}: no {program} ({why})");
    }
    missing
}

/// The instances of `service`, as the server lists them (none if it does not answer).
pub fn instances_of(host: &TestHost, service: &'static str) -> Vec<tugboat::model::Instance> {
    host.api(|c| async move { c.instances(Some(service)).await })
        .map(|l| l.items)
        .unwrap_or_default()
}

/// An instance of `service` that runs and is ready.
pub fn running(host: &TestHost, service: &'static str) -> Option<tugboat::model::Instance> {
    instances_of(host, service)
        .into_iter()
        .find(|i| i.phase == tugboat::model::InstancePhase::Running && i.ready)
}

/// `sh -c SCRIPT` in an instance, through the API: its exit code and output.
pub fn exec_sh(host: &TestHost, id: &str, script: &str) -> (i32, String) {
    let (id, script) = (id.to_string(), script.to_string());
    let out = host
        .api(|c| async move {
            c.exec(&id, &["sh".to_string(), "-c".to_string(), script])
                .await
        })
        .expect("exec");
    (out.exit_code, format!("{}{}", out.stdout, out.stderr))
}

/// A server on a host of its own (`s`) and agents for nodes a and b (`hosts`), on a LAN of
/// namespaces (`{net}.1` the server, `{net}.2` and `.3` the agents; `{net}.0/24` exists
/// inside them only), each agent joined with a join token and importing the shop's catalog
/// image; returned once both nodes are registered. Fields drop in order: LAN, agents, server.
pub struct TwoNodes {
    pub lan: Lan,
    pub hosts: [TestHost; 2],
    pub s: TestHost,
}

/// [`TwoNodes`] on `{net}.0/24`, the nodes' container subnets `{pods}.2.0/24` and
/// `{pods}.3.0/24`.
pub fn server_and_two_agents(net: &str, pods: &str, limit: Duration) -> TwoNodes {
    let mut s = TestHost::new();
    let mut hosts = [TestHost::new(), TestHost::new()];
    let lan = Lan::new(&[
        ("s", &s, &format!("{net}.1/24")),
        ("a", &hosts[0], &format!("{net}.2/24")),
        ("b", &hosts[1], &format!("{net}.3/24")),
    ]);
    let server_dir = s.dir.join("server").display().to_string();
    #[rustfmt::skip]
    s.spawn("server", &["server", "--listen", "0.0.0.0:7480", "--data-dir", &server_dir,
                        "--profile", "lan"]);
    s.wait_for_output("server: tugboat server listening", limit);
    let (token, hash) = join_token(&s, "two-node test");
    let image = shop_images().join("oci/shop-catalog").display().to_string();
    let server = format!("{net}.1:7480");
    for (i, (host, node)) in hosts.iter_mut().zip(["a", "b"]).enumerate() {
        let n = i + 2;
        let address = format!("{net}.{n}");
        let data = host.dir.join("agent").display().to_string();
        #[rustfmt::skip]
        let args = [
            "agent", "--addr", &server, "--join-token", &token, "--ca-hash", &hash,
            "--data-dir", &data, "--node", node, "--subnet", &format!("{pods}.{n}.0/24"),
            "--address", &address, "--api-listen", &format!("{address}:7481"),
            "--import", &image,
        ];
        host.spawn(&format!("agent-{node}"), &args);
    }
    wait_for(
        "nodes a and b registered",
        limit,
        || s.api(|c| async move { c.nodes().await.map(|l| l.items.len()).unwrap_or(0) }) == 2,
        || format!("{:#?}", instances(&s)),
    );
    TwoNodes { lan, hosts, s }
}
