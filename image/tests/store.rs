//! The store without a registry: OCI layout import, lookups, digest mismatches, two
//! imports at once, rm and prune, and the overlay rootfs (with a recording mounter, and
//! for real as root).

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::layout::{layer_tar, sha256, write_layout, ImageSpec, Item};
use common::tools::skip;
use tug_image::{Error, ImageStore, Mounter};

fn two_layer_spec<'a>(ref_name: &'a str) -> ImageSpec<'a> {
    ImageSpec {
        layers: vec![
            layer_tar(&[
                Item::Dir("bin"),
                Item::File("bin/tool", b"v1", 0o755),
                Item::File("etc/a", b"a", 0o644),
            ]),
            layer_tar(&[Item::File("bin/tool", b"v2", 0o755)]),
        ],
        ref_name,
        ..ImageSpec::default()
    }
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn import_layout_resolve_list_inspect() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("app");
    let md = write_layout(&layout, &two_layer_spec("localhost/app:1"));
    let store = ImageStore::open(&work.path().join("data")).unwrap();
    let images = store.import(&layout).unwrap();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.reference, "localhost/app:1");
    assert_eq!(img.digest, md);
    assert_eq!(img.config.cmd, vec!["/bin/sh"]);
    assert_eq!(img.config.exposed_ports, vec!["8080/tcp"]);
    assert_eq!(
        img.config.labels.get("test").map(String::as_str),
        Some("yes")
    );
    assert_eq!(img.layers.len(), 2);
    assert_eq!(fs::read(img.layers[0].join("bin/tool")).unwrap(), b"v1");
    assert_eq!(fs::read(img.layers[1].join("bin/tool")).unwrap(), b"v2");

    assert_eq!(store.resolve("localhost/app:1").unwrap(), *img);
    assert_eq!(store.resolve(&md).unwrap().digest, md);
    assert_eq!(
        store.resolve(&md["sha256:".len()..][..12]).unwrap().digest,
        md
    );
    match store.resolve("localhost/app:2") {
        Err(Error::NotFound { reference }) => assert_eq!(reference, "localhost/app:2"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.list().unwrap().len(), 1);
    let details = store.inspect("localhost/app:1").unwrap();
    assert_eq!(details.layers.len(), 2);

    // A bare tag in the layout's annotation is put on a name made from the directory.
    let other = work.path().join("other-image");
    write_layout(&other, &two_layer_spec("v3"));
    let imgs = store.import(&other).unwrap();
    assert_eq!(imgs[0].reference, "localhost/other-image:v3");
    // The two images share their layers.
    assert_eq!(imgs[0].layers, img.layers);
}

#[test]
fn digest_mismatch_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let store = ImageStore::open(&data).unwrap();

    // A blob whose content does not match its name.
    let layout = work.path().join("tampered");
    write_layout(&layout, &two_layer_spec("localhost/t:1"));
    let tar = layer_tar(&[Item::File("bin/tool", b"v2", 0o755)]);
    let gz_digest = sha256(&common::layout::gzip(&tar));
    let blob = layout
        .join("blobs/sha256")
        .join(&gz_digest["sha256:".len()..]);
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let err = store.import(&layout).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&data.join("images/tmp")), 0);
    assert!(!data
        .join("images/blobs/sha256")
        .join(&gz_digest["sha256:".len()..])
        .exists());

    // A layer whose uncompressed content does not match the config's diff id.
    let layout = work.path().join("bad-diff");
    let mut spec = two_layer_spec("localhost/d:1");
    spec.diff_ids = Some(vec![sha256(b"x"), sha256(b"y")]);
    write_layout(&layout, &spec);
    let err = store.import(&layout).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&data.join("images/layers/sha256")), 0);
    assert_eq!(count(&data.join("images/tmp")), 0);
}

#[test]
fn two_imports_at_once_agree() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("app");
    let md = write_layout(&layout, &two_layer_spec("localhost/app:1"));
    let data = work.path().join("data");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (layout, data) = (layout.clone(), data.clone());
            std::thread::spawn(move || ImageStore::open(&data).unwrap().import(&layout).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap()[0].digest, md);
    }
    let store = ImageStore::open(&data).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(count(&data.join("images/layers/sha256")), 2);
    assert_eq!(count(&data.join("images/tmp")), 0);
}

#[derive(Default, Clone)]
struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
    mounted: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Mounter for Recorder {
    fn mount_overlay(&self, target: &Path, options: &str) -> nix::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("mount {} {options}", target.display()));
        self.mounted.lock().unwrap().insert(target.to_path_buf());
        Ok(())
    }
    fn bind_idmapped(
        &self,
        source: &Path,
        target: &Path,
        _userns: std::os::fd::BorrowedFd<'_>,
    ) -> nix::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("idmap {} {}", source.display(), target.display()));
        self.mounted.lock().unwrap().insert(target.to_path_buf());
        Ok(())
    }
    fn unmount(&self, target: &Path, _detach: bool) -> nix::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("umount {}", target.display()));
        self.mounted.lock().unwrap().remove(target);
        Ok(())
    }
    fn is_mounted(&self, target: &Path) -> bool {
        self.mounted.lock().unwrap().contains(target)
    }
}

#[test]
fn rootfs_steps_are_idempotent_and_protect_layers() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("app");
    let md = write_layout(&layout, &two_layer_spec("localhost/app:1"));
    let data = work.path().join("data");
    let rec = Recorder::default();
    let store = ImageStore::open_with_mounter(&data, Box::new(rec.clone())).unwrap();
    let img = store.import(&layout).unwrap().remove(0);
    let r1 = store.prepare_rootfs(&img, "inst-1").unwrap();
    let r2 = store.prepare_rootfs(&img, "inst-1").unwrap();
    assert_eq!(r1, r2);
    assert_eq!(r1.path, data.join("rootfs/inst-1/merged"));
    let calls = rec.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let d = data.join("rootfs/inst-1");
    assert_eq!(
        calls[0],
        format!(
            "mount {} lowerdir={}:{},upperdir={},workdir={}",
            d.join("merged").display(),
            img.layers[1].display(),
            img.layers[0].display(),
            d.join("upper").display(),
            d.join("work").display()
        )
    );

    // Prune with nothing in use keeps what the instance's rootfs uses.
    let report = store.prune(&HashSet::new()).unwrap();
    assert!(report.images.is_empty(), "{report:?}");
    assert_eq!(store.resolve("localhost/app:1").unwrap().digest, md);

    store.remove_rootfs("inst-1").unwrap();
    store.remove_rootfs("inst-1").unwrap();
    assert!(!d.exists());
    assert_eq!(rec.calls.lock().unwrap().len(), 2);

    // Now nothing uses it: prune removes the image and all its content.
    let keep: HashSet<String> = HashSet::new();
    let report = store.prune(&keep).unwrap();
    assert_eq!(report.images, vec!["localhost/app:1".to_string()]);
    assert_eq!(report.layers, 2);
    assert_eq!(report.blobs, 4);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&data.join("images/blobs/sha256")), 0);
    assert_eq!(
        count(&data.join("images/locks")),
        0,
        "lock files do not pile up"
    );
}

#[test]
fn a_mapped_rootfs_stacks_idmapped_layers_and_removes_them() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("app");
    write_layout(&layout, &two_layer_spec("localhost/app:1"));
    let data = work.path().join("data");
    let rec = Recorder::default();
    let store = ImageStore::open_with_mounter(&data, Box::new(rec.clone())).unwrap();
    let img = store.import(&layout).unwrap().remove(0);
    // The recorder never uses the fd; any open file stands in for a user namespace.
    let ns = std::fs::File::open("/proc/self/ns/user").unwrap();
    // Our own ids, so that the chown works for whoever runs the test.
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let mapped = tug_image::Mapped {
        userns: std::os::fd::AsFd::as_fd(&ns),
        root_uid: uid,
        root_gid: gid,
    };
    let r = store
        .prepare_rootfs_mapped(&img, "inst-m", Some(&mapped))
        .unwrap();
    let d = data.join("rootfs/inst-m");
    assert_eq!(r.path, d.join("merged"));
    let calls = rec.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            format!(
                "idmap {} {}",
                img.layers[0].display(),
                d.join("lower/0").display()
            ),
            format!(
                "idmap {} {}",
                img.layers[1].display(),
                d.join("lower/1").display()
            ),
            format!(
                "mount {} lowerdir={}:{},upperdir={},workdir={}",
                d.join("merged").display(),
                d.join("lower/1").display(),
                d.join("lower/0").display(),
                d.join("upper").display(),
                d.join("work").display()
            ),
        ]
    );
    // Again: the mounts are there, nothing is done twice.
    store
        .prepare_rootfs_mapped(&img, "inst-m", Some(&mapped))
        .unwrap();
    assert_eq!(rec.calls.lock().unwrap().len(), 3);
    store.remove_rootfs("inst-m").unwrap();
    let calls = rec.calls.lock().unwrap().clone();
    let mut unmounted: Vec<&String> = calls[3..].iter().collect();
    assert_eq!(
        unmounted.remove(0),
        &format!("umount {}", d.join("merged").display())
    );
    unmounted.sort();
    assert_eq!(
        unmounted,
        vec![
            &format!("umount {}", d.join("lower/0").display()),
            &format!("umount {}", d.join("lower/1").display()),
        ]
    );
    assert!(!d.exists());
}

#[test]
fn prune_keeps_in_use_and_rm_removes() {
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    let ma = write_layout(&a, &two_layer_spec("localhost/a:1"));
    let mut spec = two_layer_spec("localhost/b:1");
    spec.layers
        .push(layer_tar(&[Item::File("only-b", b"b", 0o644)]));
    write_layout(&b, &spec);
    let store = ImageStore::open(&work.path().join("data")).unwrap();
    store.import(&a).unwrap();
    store.import(&b).unwrap();
    let report = store.prune(&HashSet::from([ma.clone()])).unwrap();
    assert_eq!(report.images, vec!["localhost/b:1".to_string()]);
    assert_eq!(report.layers, 1, "only b's own layer goes");
    assert_eq!(store.resolve("localhost/a:1").unwrap().digest, ma);
    // A second name for a: rm by name removes one name, rm by digest every name.
    store
        .import_with(
            &a,
            &tug_image::ImportOptions {
                name: Some("localhost/a-too:2".into()),
                ..Default::default()
            },
        )
        .unwrap();
    store.remove("localhost/a:1").unwrap();
    assert_eq!(store.resolve("localhost/a-too:2").unwrap().digest, ma);
    store.import(&a).unwrap();
    assert_eq!(store.list().unwrap().len(), 2);
    store.remove(&ma).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(matches!(
        store.remove("localhost/a:1"),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(count(&work.path().join("data/images/layers/sha256")), 0);
}

#[test]
fn real_overlay_rootfs_as_root() {
    if !nix::unistd::geteuid().is_root() {
        skip("real_overlay_rootfs_as_root: needs root to mount overlayfs");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("app");
    let mut spec = two_layer_spec("localhost/app:1");
    // The top layer deletes etc/a through a whiteout.
    spec.layers[1] = layer_tar(&[
        Item::File("bin/tool", b"v2", 0o755),
        Item::File("etc/.wh.a", b"", 0o644),
    ]);
    write_layout(&layout, &spec);
    let data = work.path().join("data");
    let store = ImageStore::open(&data).unwrap();
    let img = store.import(&layout).unwrap().remove(0);
    let rootfs = store.prepare_rootfs(&img, "ovl-1").unwrap();
    let guard = RootfsGuard(&store, "ovl-1");
    assert_eq!(store.prepare_rootfs(&img, "ovl-1").unwrap(), rootfs);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(
        mounts.matches(rootfs.path.to_str().unwrap()).count(),
        1,
        "mounted once"
    );
    assert_eq!(fs::read(rootfs.path.join("bin/tool")).unwrap(), b"v2");
    assert!(!rootfs.path.join("etc/a").exists(), "whiteout hides etc/a");
    fs::write(rootfs.path.join("new-file"), b"w").unwrap();
    assert_eq!(
        fs::read(data.join("rootfs/ovl-1/upper/new-file")).unwrap(),
        b"w"
    );
    assert!(!img.layers[1].join("new-file").exists());
    drop(guard);
    assert!(!data.join("rootfs/ovl-1").exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(rootfs.path.to_str().unwrap()));
}

/// Unmounts and removes an instance rootfs even when the test fails.
struct RootfsGuard<'a>(&'a ImageStore, &'a str);

impl Drop for RootfsGuard<'_> {
    fn drop(&mut self) {
        self.0.remove_rootfs(self.1).unwrap();
    }
}

#[tokio::test]
async fn cli_commands_run_against_the_store() {
    use tug_image::cli::{run, ImageCommand};
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("app");
    write_layout(&layout, &two_layer_spec("localhost/app:1"));
    let data = work.path().join("data");
    run(
        ImageCommand::Import {
            path: layout,
            name: Some("localhost/renamed:2".into()),
            platform: None,
            no_layer_blobs: false,
        },
        &data,
    )
    .await
    .unwrap();
    for format in ["table", "json"] {
        run(
            ImageCommand::Ls {
                format: format.into(),
                quiet: false,
            },
            &data,
        )
        .await
        .unwrap();
    }
    run(
        ImageCommand::Inspect {
            reference: "localhost/renamed:2".into(),
        },
        &data,
    )
    .await
    .unwrap();
    let err = run(
        ImageCommand::Rm {
            references: vec!["localhost/nope:1".into()],
        },
        &data,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("localhost/nope:1"), "{err}");
    run(ImageCommand::Prune, &data).await.unwrap();
    assert!(ImageStore::open(&data).unwrap().list().unwrap().is_empty());
}

#[test]
fn zstd_and_plain_layers_import_and_leftovers_are_cleaned_at_open() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    for compression in ["zstd", "none"] {
        let layout = work.path().join(compression);
        let mut spec = two_layer_spec("localhost/c:1");
        spec.compression = compression;
        let md = write_layout(&layout, &spec);
        let store = ImageStore::open(&data).unwrap();
        let img = store.import(&layout).unwrap().remove(0);
        assert_eq!(img.digest, md);
        assert_eq!(fs::read(img.layers[1].join("bin/tool")).unwrap(), b"v2");
    }
    // What a crashed writer left in tmp/ goes at the next open, when no one writes.
    fs::write(data.join("images/tmp/blob.999999.0"), b"half").unwrap();
    fs::create_dir(data.join("images/tmp/layer.999999.1")).unwrap();
    let _store = ImageStore::open(&data).unwrap();
    assert_eq!(count(&data.join("images/tmp")), 0);
    // A relative data dir names the same store (mount points are compared absolute).
    let here = std::env::current_dir().unwrap();
    let rel = pathdiff(&data, &here);
    let store = ImageStore::open(&rel).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
}

/// `target` relative to `base` (both absolute).
fn pathdiff(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

#[test]
fn many_layers_mount_through_short_links() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("deep");
    let names: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
    let layers: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            layer_tar(&[
                Item::File(n, n.as_bytes(), 0o644),
                Item::File("top", n.as_bytes(), 0o644),
            ])
        })
        .collect();
    write_layout(
        &layout,
        &ImageSpec {
            layers,
            ref_name: "localhost/deep:1",
            ..ImageSpec::default()
        },
    );
    let data = work.path().join("data");
    let rec = Recorder::default();
    let store = ImageStore::open_with_mounter(&data, Box::new(rec.clone())).unwrap();
    let img = store.import(&layout).unwrap().remove(0);
    store.prepare_rootfs(&img, "deep").unwrap();
    let call = rec.calls.lock().unwrap()[0].clone();
    assert!(call.len() < 4096 + 200, "{}", call.len());
    assert!(call.contains("/images/l/"), "{call}");
    store.remove_rootfs("deep").unwrap();
    drop(store);

    if !nix::unistd::geteuid().is_root() {
        skip("many_layers_mount_through_short_links (mount part): needs root");
    } else {
        let store = ImageStore::open(&data).unwrap();
        let rootfs = store.prepare_rootfs(&img, "deep").unwrap();
        let guard = RootfsGuard(&store, "deep");
        assert_eq!(fs::read(rootfs.path.join("f0")).unwrap(), b"f0");
        assert_eq!(fs::read(rootfs.path.join("f59")).unwrap(), b"f59");
        assert_eq!(fs::read(rootfs.path.join("top")).unwrap(), b"f59");
        drop(guard);
    }
    let store = ImageStore::open(&data).unwrap();
    store.prune(&HashSet::new()).unwrap();
    assert_eq!(
        count(&data.join("images/l")),
        0,
        "links of removed layers go"
    );
}
