//! Against a real registry: Debian's docker-registry on a loopback port, images pushed by
//! skopeo from OCI layouts built here. Pull, pull again (nothing downloaded twice), prune,
//! and (as root) run a container from the pulled image with `tug`.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::tools::{busybox_layout, is_root, run, skip, Registry};
use tug_image::{Error, ImageStore, Platform, Progress, PullOptions};

fn opts(reg: &Registry) -> PullOptions {
    PullOptions {
        insecure_registries: vec![reg.addr.clone()],
        progress: Progress::Lines,
        ..PullOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_pull_again_prune() {
    let reg = Registry::start();
    let work = tempfile::Builder::new().prefix("tugimg").tempdir().unwrap();
    let layout = work.path().join("layout");
    let manifest = busybox_layout(&layout);
    reg.push(&layout, "latest", "tug/busybox:1", false);

    let store = ImageStore::open(&work.path().join("data")).unwrap();
    let reference = format!("{}/tug/busybox:1", reg.addr);
    let first = store
        .pull_with_report(&reference, &opts(&reg))
        .await
        .unwrap();
    // skopeo keeps the manifest as built, so the digest is the layout's.
    assert_eq!(first.image.digest, manifest);
    assert_eq!(first.image.reference, reference);
    assert_eq!(first.blobs_fetched, 3, "config and two layers");
    assert!(first.image.layers[0].join("bin/busybox").is_file());
    assert_eq!(first.image.config.cmd, vec!["/bin/busybox", "true"]);

    let again = store
        .pull_with_report(&reference, &opts(&reg))
        .await
        .unwrap();
    assert_eq!(again.blobs_fetched, 0, "nothing downloaded twice");
    assert_eq!(again.bytes_fetched, 0);
    assert_eq!(again.layers_present, 2);
    assert_eq!(again.image, first.image);

    // By digest, with the manifest here: no registry needed at all.
    let by_digest = format!("{}/tug/busybox@{}", reg.addr, manifest);
    let r = store
        .pull_with_report(&by_digest, &opts(&reg))
        .await
        .unwrap();
    assert_eq!(r.blobs_fetched, 0);

    // http only for registries marked insecure.
    let err = store
        .pull(
            &reference,
            &PullOptions {
                progress: Progress::Quiet,
                ..PullOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");

    // Unknown tag: an error naming the reference.
    let missing = format!("{}/tug/busybox:nope", reg.addr);
    let err = store.pull(&missing, &opts(&reg)).await.unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");

    let report = store.prune(&HashSet::from([manifest.clone()])).unwrap();
    assert!(report.images.is_empty() || report.images.iter().all(|i| !i.contains(":1")));
    assert_eq!(store.resolve(&reference).unwrap().digest, manifest);
    let report = store.prune(&HashSet::new()).unwrap();
    assert!(!report.images.is_empty());
    assert!(store.list().unwrap().is_empty());
    assert_eq!(report.layers, 2);
}

/// Two processes pulling the same image into one store at once: both succeed, and the
/// store holds one copy of each layer and no leftovers.
#[test]
fn two_processes_pull_at_once() {
    let reg = Registry::start();
    let work = tempfile::Builder::new().prefix("tugimg").tempdir().unwrap();
    let layout = work.path().join("layout");
    let manifest = busybox_layout(&layout);
    reg.push(&layout, "latest", "tug/twice:1", false);
    let data = work.path().join("data");
    let reference = format!("{}/tug/twice:1", reg.addr);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_tug-image"))
            .arg("--data-dir")
            .arg(&data)
            .args(["pull", "-q", "--insecure-registry", &reg.addr, &reference])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(&manifest));
    }
    let store = ImageStore::open(&data).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    let count = |p: &str| std::fs::read_dir(data.join(p)).unwrap().count();
    assert_eq!(count("images/layers/sha256"), 2);
    assert_eq!(count("images/tmp"), 0);
    // index-less image: manifest, config, two layers
    assert_eq!(count("images/blobs/sha256"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_chooses_the_platform_from_an_index() {
    let reg = Registry::start();
    let work = tempfile::Builder::new().prefix("tugimg").tempdir().unwrap();
    let layout = work.path().join("layout");
    let host = common::layout::write_platform_index(&layout, "multi");
    reg.push(&layout, "multi", "tug/multi:1", true);
    let store = ImageStore::open(&work.path().join("data")).unwrap();
    let reference = format!("{}/tug/multi:1", reg.addr);
    let img = store.pull(&reference, &opts(&reg)).await.unwrap();
    assert_eq!(img.digest, host);
    assert_eq!(
        std::fs::read_to_string(img.layers[0].join("platform")).unwrap(),
        Platform::host().architecture
    );
    let err = store
        .pull(
            &reference,
            &PullOptions {
                platform: Some(Platform::parse("linux/mips64").unwrap()),
                ..opts(&reg)
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
    let other = store
        .pull(
            &reference,
            &PullOptions {
                platform: Some(Platform::parse("linux/other").unwrap()),
                ..opts(&reg)
            },
        )
        .await
        .unwrap();
    assert_ne!(other.digest, host);
}

fn tug_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "tug-runtime"])
        .current_dir(root)
        .status()
        .unwrap();
    assert!(status.success(), "cargo build -p tug-runtime");
    root.join("target/debug/tug")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_a_container_from_a_pulled_image() {
    if !is_root() {
        skip("run_a_container_from_a_pulled_image: needs root (overlay mount, tug run)");
        return;
    }
    let reg = Registry::start();
    let work = tempfile::Builder::new().prefix("tugimg").tempdir().unwrap();
    let layout = work.path().join("layout");
    busybox_layout(&layout);
    reg.push(&layout, "latest", "tug/run:1", false);
    let store = ImageStore::open(&work.path().join("data")).unwrap();
    let img = store
        .pull(&format!("{}/tug/run:1", reg.addr), &opts(&reg))
        .await
        .unwrap();
    let id = format!("tugimg{}", std::process::id());
    let rootfs = store.prepare_rootfs(&img, &id).unwrap();
    let _guard = RootfsGuard(&store, id.clone());
    assert!(rootfs.path.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(rootfs.path.join("etc/motd")).unwrap(),
        "hello from tug\n"
    );

    let tug = tug_binary();
    let bundle = work.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    run(Command::new(&tug).arg("spec").arg("--bundle").arg(&bundle));
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["root"]["path"] = serde_json::json!(rootfs.path);
    cfg["root"]["readonly"] = serde_json::json!(false);
    cfg["process"]["terminal"] = serde_json::json!(false);
    let mut args: Vec<String> = img.config.entrypoint.clone();
    args.extend(img.config.cmd.clone());
    assert_eq!(args, vec!["/bin/busybox", "true"]);
    cfg["process"]["args"] = serde_json::json!(args);
    cfg["process"]["env"] = serde_json::json!(img.config.env);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let state = work.path().join("state");
    let out = Command::new(&tug)
        .arg("--root")
        .arg(&state)
        .args(["run", &id, "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "tug run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A write in the container lands in the instance's upper dir, not in a layer.
    cfg["process"]["args"] = serde_json::json!(["/bin/sh", "-c", "echo hi > /written"]);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let out = Command::new(&tug)
        .arg("--root")
        .arg(&state)
        .args(["run", &format!("{id}b"), "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upper = work
        .path()
        .join("data/rootfs")
        .join(&id)
        .join("upper/written");
    assert_eq!(std::fs::read_to_string(upper).unwrap(), "hi\n");
    assert!(img.layers.iter().all(|l| !l.join("written").exists()));
}

struct RootfsGuard<'a>(&'a ImageStore, String);

impl Drop for RootfsGuard<'_> {
    fn drop(&mut self) {
        self.0.remove_rootfs(&self.1).unwrap();
    }
}
