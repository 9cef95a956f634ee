//! The `tug-cni` binary, run as a container runtime would: inside the host's namespace,
//! configuration on stdin, parameters in the environment. Needs root.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Ns, RootWatch};

fn cni(host: &Ns, command: &str, id: &str, netns: &str, conf: &str) -> (i32, serde_json::Value) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.name, env!("CARGO_BIN_EXE_tug-cni")])
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn add_check_del_through_the_plugin_binary() {
    need_root!();
    let watch = RootWatch::new();
    let data = tempfile::tempdir().unwrap();
    let host = Ns::new("cnihost");
    let c = Ns::new("cnic");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "cni", "type": "tug-cni",
        "subnet": "10.55.0.0/24", "dataDir": data.path(),
        "runtimeConfig": { "portMappings": [ { "hostPort": 8080, "containerPort": 80, "protocol": "tcp" } ] }
    })
    .to_string();
    let netns = c.path().display().to_string();

    let (code, out) = cni(&host, "VERSION", "", "", "");
    assert_eq!(code, 0);
    assert!(out["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "1.0.0"));

    let (code, out) = cni(&host, "ADD", "ctr1", &netns, &conf);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["ips"][0]["address"], "10.55.0.2/24");
    assert_eq!(out["ips"][0]["gateway"], "10.55.0.1");
    assert_eq!(out["interfaces"][1]["name"], "eth0");
    assert_eq!(out["interfaces"][1]["sandbox"], netns.as_str());
    assert!(c.addresses().contains("10.55.0.2/24"));

    let (code, out) = cni(&host, "CHECK", "ctr1", &netns, &conf);
    assert_eq!(code, 0, "{out}");

    // A second container asking for the same host port is refused with the holder named.
    let c2 = Ns::new("cnic2");
    let (code, out) = cni(
        &host,
        "ADD",
        "ctr2",
        &c2.path().display().to_string(),
        &conf,
    );
    assert_eq!(code, 1);
    assert_eq!(out["code"], 101);
    assert!(out["msg"].as_str().unwrap().contains("ctr1"), "{out}");
    assert!(c2.addresses().lines().all(|l| !l.contains("eth0")));

    let (code, _) = cni(&host, "DEL", "ctr1", &netns, &conf);
    assert_eq!(code, 0);
    let (code, _) = cni(&host, "DEL", "ctr1", "", &conf);
    assert_eq!(code, 0, "DEL twice, without a netns, succeeds");
    let (code, out) = cni(&host, "CHECK", "ctr1", &netns, &conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(3)), "{out}");

    // Missing namespace: named in the error.
    let (code, out) = cni(&host, "ADD", "ctr3", "/run/netns/tug-no-such-ns", &conf);
    assert_eq!(code, 1);
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("/run/netns/tug-no-such-ns"),
        "{out}"
    );

    assert!(host.links_of_kind("veth").is_empty());
    let (code, out) = cni(&host, "ADD", "ctr1", &netns, "{\"cniVersion\":\"9.9.9\"}");
    assert_eq!((code, out["code"].as_u64()), (1, Some(6)), "{out}");
    drop(c);
    drop(c2);
    drop(host);
    watch.check();
}
