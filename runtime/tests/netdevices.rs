//! Root tests: linux.netDevices (runtime-spec 1.3). Every test runs tug inside a network
//! namespace it makes, with a veth pair of its own there: nothing touches the host's root
//! network namespace.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use common::{id, no_cgroup_left, show, Env};
use serde_json::json;

/// A process of the test holding a network namespace of its own; killed by its pid when
/// the test ends, and the namespace (with the devices made in it) goes with it.
struct Netns {
    holder: std::process::Child,
    fd: OwnedFd,
}

impl Netns {
    fn new() -> Netns {
        let mut cmd = Command::new("/bin/busybox");
        cmd.args(["sleep", "1000"]);
        // SAFETY: one syscall between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(())
            });
        }
        let holder = cmd.spawn().unwrap();
        let path = format!("/proc/{}/ns/net", holder.id());
        // The namespace is the holder's once it runs sleep: wait for that.
        common::wait_for(
            "the holder's namespace",
            std::time::Duration::from_secs(10),
            || std::fs::read_link(&path).ok() != std::fs::read_link("/proc/self/ns/net").ok(),
        );
        let fd = std::fs::File::open(&path).unwrap().into();
        Netns { holder, fd }
    }

    /// `program args` run in the namespace. Output goes through files: a created container
    /// keeps tug's stdio open.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap());
        let fd = self.fd.as_raw_fd();
        // SAFETY: one syscall between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status = cmd.status().unwrap();
        Output {
            status,
            stdout: std::fs::read(out.path()).unwrap(),
            stderr: std::fs::read(err.path()).unwrap(),
        }
    }

    /// The MAC address of `dev` in the namespace, if it is there.
    fn mac(&self, dev: &str) -> Option<String> {
        let out = self.run(ip(), &["-o", "link", "show", "dev", dev]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        words.find(|w| *w == "link/ether")?;
        words.next().map(str::to_string)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn ip() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ip")
}

/// `tug` of `env`, run in `ns`: there it is the namespace devices come from and go back to.
fn tug(ns: &Netns, env: &Env, args: &[&str]) -> Output {
    tug_at(ns, &env.state_root(), args)
}

fn tug_at(ns: &Netns, root: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["--root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    let tug = common::tug_bin();
    ns.run(tug.to_str().unwrap(), &all)
}

/// Force-deletes the test's container from inside its namespace, however the test ends
/// (before Env's own cleanup, which runs tug in the host's namespace).
struct DeleteIn<'a>(&'a Netns, std::path::PathBuf, Vec<String>);

impl Drop for DeleteIn<'_> {
    fn drop(&mut self) {
        for id in &self.2 {
            let _ = tug_at(self.0, &self.1, &["delete", "--force", id]);
        }
    }
}

#[test]
fn a_net_device_moves_into_the_container_and_back_on_delete() {
    skip_unless_root!("a_net_device_moves_into_the_container_and_back_on_delete");
    if !std::path::Path::new(ip()).exists() {
        eprintln!(
            "SKIP a_net_device_moves_into_the_container_and_back_on_delete: no ip (iproute2)"
        );
        return;
    }
    let ns = Netns::new();
    let out = ns.run(
        ip(),
        &[
            "link", "add", "tugtnd0", "type", "veth", "peer", "name", "tugtnd1",
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    let mac = ns.mac("tugtnd0").expect("the veth was made");

    let mut env = Env::new(&["sleep", "1000"]);
    env.edit(|s| s["linux"]["netDevices"] = json!({"tugtnd0": {"name": "eth9"}}));
    let id = id("netdev");
    let failing = common::id("netdev-fail");
    let _cleanup = DeleteIn(&ns, env.state_root(), vec![id.clone(), failing.clone()]);
    let b = env.bundle();
    let out = tug(&ns, &env, &["create", &id, "--bundle", b.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let out = tug(&ns, &env, &["start", &id]);
    assert!(out.status.success(), "{}", show(&out));
    // Inside under its new name, the same device; gone from where it came from.
    let out = tug(
        &ns,
        &env,
        &["exec", &id, "cat", "/sys/class/net/eth9/address"],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), mac);
    assert_eq!(ns.mac("tugtnd0"), None);
    assert!(ns.mac("tugtnd1").is_some());
    // Back, under its own name, on delete.
    let out = tug(&ns, &env, &["delete", "--force", &id]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(ns.mac("tugtnd0").as_deref(), Some(mac.as_str()));
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);

    // A create that fails after the move gives the device back too.
    env.edit(|s| s["process"]["args"] = json!(["/no/such/program"]));
    let id = failing;
    let out = tug(&ns, &env, &["create", &id, "--bundle", b.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/no/such/program"),
        "{}",
        show(&out)
    );
    assert_eq!(ns.mac("tugtnd0").as_deref(), Some(mac.as_str()));
    assert!(!env.state_root().join(&id).exists());
    no_cgroup_left(&id);

    // A device tug's namespace does not have, and a container without a network namespace.
    env.edit(|s| {
        s["process"]["args"] = json!(["true"]);
        s["linux"]["netDevices"] = json!({"tugtnd-none": {}});
    });
    let out = tug(&ns, &env, &["create", &id, "--bundle", b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("linux.netDevices.tugtnd-none"),
        "{}",
        show(&out)
    );
    env.edit(|s| {
        s["linux"]["netDevices"] = json!({"tugtnd0": {}});
        let ns: Vec<serde_json::Value> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] != "network")
            .cloned()
            .collect();
        s["linux"]["namespaces"] = json!(ns);
    });
    let out = tug(&ns, &env, &["create", &id, "--bundle", b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("linux.netDevices: needs a network namespace"),
        "{}",
        show(&out)
    );
    assert!(!env.state_root().join(&id).exists());
    assert_eq!(ns.mac("tugtnd0").as_deref(), Some(mac.as_str()));
}
