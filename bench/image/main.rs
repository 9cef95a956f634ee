//! Pull + unpack of a ~100 MB image from a loopback registry: tug-image against
//! `skopeo copy` followed by `umoci unpack`.
//!
//! `cargo bench -p tug-image --bench image [-- --runs N --mb N --layers N]` (as root:
//! umoci unpack and the overlay mount need it). The image is made from real files under
//! /usr (sorted, so the same on every run), split into layers, gzip-compressed, pushed to
//! Debian's docker-registry on 127.0.0.1 by skopeo. Each run starts from an empty store /
//! empty directories; runs of the two tools alternate.

#[path = "../../image/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::layout::{write_layout, ImageSpec};
use common::tools::{run, tool, Registry};
use tug_image::{ImageStore, Progress, PullOptions};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Regular files under the roots, sorted, until `limit` bytes.
fn collect_files(roots: &[&str], limit: u64) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut total = 0;
    let mut stack: Vec<PathBuf> = roots.iter().rev().map(PathBuf::from).collect();
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        let mut subdirs = Vec::new();
        for p in entries {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                subdirs.push(p);
            } else if m.is_file() && m.len() < 20 << 20 {
                out.push((p, m.len()));
                total += m.len();
                if total >= limit {
                    return out;
                }
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out
}

fn layer_from(files: &[(PathBuf, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    for (p, _) in files {
        let rel = p.strip_prefix("/").unwrap();
        b.append_path_with_name(p, rel).unwrap();
    }
    b.into_inner().unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP image bench: needs root (umoci unpack, overlay mount)");
        return;
    }
    let runs = arg("--runs", 3);
    let mb = arg("--mb", 100) as u64;
    let layers = arg("--layers", 4);
    let work = tempfile::Builder::new()
        .prefix("tugimg-bench")
        .tempdir()
        .unwrap();

    eprintln!("building a {mb} MB image in {layers} layers from /usr ...");
    let files = collect_files(&["/usr/lib", "/usr/share", "/usr/bin"], mb << 20);
    let per = files.len().div_ceil(layers);
    let tars: Vec<Vec<u8>> = files.chunks(per).map(layer_from).collect();
    let raw: usize = tars.iter().map(Vec::len).sum();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        &ImageSpec {
            layers: tars,
            ..ImageSpec::default()
        },
    );
    let blobs: u64 = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let reg = Registry::start();
    reg.push(&layout, "latest", "bench/image:1", false);
    let reference = format!("{}/bench/image:1", reg.addr);
    eprintln!(
        "image: {} files, {:.1} MB of tar, {:.1} MB compressed; registry {}",
        files.len(),
        raw as f64 / 1e6,
        blobs as f64 / 1e6,
        reg.addr
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tug = Vec::new();
    let mut tug_serial = Vec::new();
    let mut pair = Vec::new();
    for i in 0..runs {
        // skopeo copy + umoci unpack
        let dir = work.path().join(format!("skopeo-{i}"));
        std::fs::create_dir(&dir).unwrap();
        let t = Instant::now();
        run(Command::new(tool("skopeo"))
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:b", dir.join("oci").display())));
        run(Command::new(tool("umoci"))
            .args(["unpack", "--image"])
            .arg(format!("{}:b", dir.join("oci").display()))
            .arg(dir.join("bundle")));
        pair.push(t.elapsed());
        std::fs::remove_dir_all(&dir).unwrap();

        for (concurrency, out) in [(3, &mut tug), (1, &mut tug_serial)] {
            let data = work.path().join(format!("tug-{i}-{concurrency}"));
            let t = Instant::now();
            let store = ImageStore::open(&data).unwrap();
            let opts = PullOptions {
                insecure_registries: vec![reg.addr.clone()],
                progress: Progress::Quiet,
                max_concurrent_downloads: concurrency,
                ..PullOptions::default()
            };
            let image = rt.block_on(store.pull(&reference, &opts)).unwrap();
            let rootfs = store.prepare_rootfs(&image, "bench").unwrap();
            out.push(t.elapsed());
            assert!(rootfs.path.join("usr").is_dir());
            store.remove_rootfs("bench").unwrap();
            std::fs::remove_dir_all(&data).unwrap();
        }
        eprintln!(
            "run {i}: skopeo+umoci {:.2}s, tug {:.2}s, tug one layer at a time {:.2}s",
            pair[i].as_secs_f64(),
            tug[i].as_secs_f64(),
            tug_serial[i].as_secs_f64()
        );
    }
    let (p, t, s) = (median(pair), median(tug), median(tug_serial));
    println!("| tool | median of {runs} (s) |");
    println!("|---|---|");
    println!("| skopeo copy + umoci unpack | {:.2} |", p.as_secs_f64());
    println!(
        "| tug-image pull + prepare_rootfs (3 layers at once) | {:.2} |",
        t.as_secs_f64()
    );
    println!(
        "| tug-image pull + prepare_rootfs (one layer at a time) | {:.2} |",
        s.as_secs_f64()
    );
    println!("speedup: {:.2}x", p.as_secs_f64() / t.as_secs_f64());
}
