//! Pull against a small fake registry: the token flow and Basic auth with credentials
//! from a `docker login` style file, wrong credentials, and blobs cut or corrupted on the
//! wire (nothing is left that looks complete, and a later pull succeeds).

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use common::fake_registry::{AuthMode, FakeRegistry, Fault};
use common::layout::{layer_tar, write_layout, ImageSpec, Item};
use tug_image::{Error, ImageStore, Progress, PullOptions};

fn big_layer() -> Vec<u8> {
    // Not very compressible, so its gzip blob is well over the fault threshold.
    let mut x = 0x2545_f491_u32;
    let big: Vec<u8> = (0..400_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    layer_tar(&[Item::File("big", &big, 0o644)])
}

fn layout(dir: &Path) -> String {
    write_layout(
        dir,
        &ImageSpec {
            layers: vec![big_layer(), layer_tar(&[Item::File("small", b"s", 0o644)])],
            ref_name: "1",
            ..ImageSpec::default()
        },
    )
}

fn auth_file(dir: &Path, host: &str, user: &str, pass: &str) -> std::path::PathBuf {
    let p = dir.join("auth.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    fs::write(
        &p,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    p
}

fn opts(addr: &str, auth: Option<std::path::PathBuf>) -> PullOptions {
    PullOptions {
        insecure_registries: vec![addr.to_string()],
        auth_file: auth,
        progress: Progress::Quiet,
        ..PullOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_basic_auth() {
    let work = tempfile::tempdir().unwrap();
    let md = layout(&work.path().join("layout"));
    for mode in [AuthMode::Token, AuthMode::Basic] {
        let reg = FakeRegistry::start(&work.path().join("layout"), mode).await;
        let reference = format!("{}/tug/app:1", reg.addr);
        let store = ImageStore::open(&work.path().join(format!("data-{mode:?}"))).unwrap();

        // No credentials: a clear error naming the reference.
        let none = work.path().join("empty-auth.json");
        fs::write(&none, r#"{"auths":{}}"#).unwrap();
        let err = store
            .pull(&reference, &opts(&reg.addr, Some(none)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Registry { .. }), "{mode:?}: {err}");
        assert!(err.to_string().contains(&reference), "{err}");

        // Wrong password.
        let wrong = auth_file(work.path(), &reg.addr, "alice", "nope");
        let err = store
            .pull(&reference, &opts(&reg.addr, Some(wrong)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Registry { .. }), "{mode:?}: {err}");

        let right = auth_file(work.path(), &reg.addr, "alice", "secret");
        let img = store
            .pull(&reference, &opts(&reg.addr, Some(right)))
            .await
            .unwrap();
        assert_eq!(img.digest, md);
        assert!(img.layers[0].join("big").is_file());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_or_corrupt_downloads_leave_nothing() {
    let work = tempfile::tempdir().unwrap();
    let md = layout(&work.path().join("layout"));
    let reg = FakeRegistry::start(&work.path().join("layout"), AuthMode::None).await;
    let reference = format!("{}/tug/app:1", reg.addr);
    let data = work.path().join("data");
    let store = ImageStore::open(&data).unwrap();
    let big_diff = common::layout::sha256(&big_layer());
    let count = |p: &str| fs::read_dir(data.join(p)).map(|r| r.count()).unwrap_or(0);

    for fault in [Fault::Truncate, Fault::Corrupt] {
        *reg.faults.lock().unwrap() = fault;
        let o = PullOptions {
            download_retries: Some(1),
            ..opts(&reg.addr, None)
        };
        let err = store.pull(&reference, &o).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::DigestMismatch { .. }
                    | Error::SizeMismatch { .. }
                    | Error::Registry { .. }
                    | Error::TarStream { .. }
            ),
            "{fault:?}: {err}"
        );
        assert!(store.list().unwrap().is_empty(), "{fault:?}");
        // The small layer may have completed (verified, so it stays); the big one not.
        assert!(!data
            .join("images/layers")
            .join(big_diff.replace(':', "/"))
            .exists());
        assert_eq!(count("images/tmp"), 0, "{fault:?}");
        for d in fs::read_dir(data.join("images/blobs/sha256")).unwrap() {
            let size = d.unwrap().metadata().unwrap().len();
            assert!(
                size < 64 * 1024,
                "{fault:?}: the cut or corrupt layer blob was kept"
            );
        }
    }

    *reg.faults.lock().unwrap() = Fault::None;
    let before = reg.blob_gets.load(Ordering::SeqCst);
    let img = store
        .pull(&reference, &opts(&reg.addr, None))
        .await
        .unwrap();
    assert_eq!(img.digest, md);
    assert_eq!(
        reg.blob_gets.load(Ordering::SeqCst) - before,
        1,
        "only the big layer is fetched again"
    );
    assert!(img.layers[0].join("big").is_file());

    // Two pulls of a fresh store at once agree and leave one copy of each layer.
    let data2 = work.path().join("data2");
    let s1 = ImageStore::open(&data2).unwrap();
    let s2 = ImageStore::open(&data2).unwrap();
    let o = opts(&reg.addr, None);
    let (a, b) = tokio::join!(s1.pull(&reference, &o), s2.pull(&reference, &o));
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(
        fs::read_dir(data2.join("images/layers/sha256"))
            .unwrap()
            .count(),
        2
    );
    assert_eq!(fs::read_dir(data2.join("images/tmp")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_download_resumes_where_it_stopped() {
    let work = tempfile::tempdir().unwrap();
    let md = layout(&work.path().join("layout"));
    for fault in [Fault::TruncateOnce, Fault::TruncateOnceNoRange] {
        let reg = FakeRegistry::start(&work.path().join("layout"), AuthMode::None).await;
        *reg.faults.lock().unwrap() = fault;
        let data = work.path().join(format!("data-{fault:?}"));
        let store = ImageStore::open(&data).unwrap();
        let img = store
            .pull(&format!("{}/tug/app:1", reg.addr), &opts(&reg.addr, None))
            .await
            .unwrap();
        assert_eq!(img.digest, md, "{fault:?}");
        assert_eq!(
            fs::read(img.layers[0].join("big")).unwrap().len(),
            400_000,
            "{fault:?}"
        );
        // config, small layer, big layer cut, big layer resumed
        assert_eq!(reg.blob_gets.load(Ordering::SeqCst), 4, "{fault:?}");
    }
}

/// A pull killed (SIGKILL) in the middle of a layer leaves nothing that looks complete:
/// no image, no layer dir, no blob of that layer; the next open clears its temp files and
/// the next pull succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pull_leaves_nothing_complete() {
    let work = tempfile::tempdir().unwrap();
    let md = layout(&work.path().join("layout"));
    let big_diff = common::layout::sha256(&big_layer());
    let reg = FakeRegistry::start(&work.path().join("layout"), AuthMode::None).await;
    *reg.faults.lock().unwrap() = Fault::Slow;
    let reference = format!("{}/tug/app:1", reg.addr);
    let data = work.path().join("data");

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tug-image"))
        .arg("--data-dir")
        .arg(&data)
        .args(["pull", "-q", "--insecure-registry", &reg.addr, &reference])
        .spawn()
        .unwrap();
    // Wait until the big layer is part-way in its temp file, then kill.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let partial = fs::read_dir(data.join("images/tmp"))
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.metadata()
                        .map(|m| m.is_file() && m.len() > 16 * 1024)
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if partial {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended too early"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = ImageStore::open(&data).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(!data
        .join("images/layers")
        .join(big_diff.replace(':', "/"))
        .exists());
    for d in fs::read_dir(data.join("images/blobs/sha256")).unwrap() {
        let size = d.unwrap().metadata().unwrap().len();
        assert!(
            size < 64 * 1024,
            "a part of the big layer was taken for a blob"
        );
    }
    assert_eq!(
        fs::read_dir(data.join("images/tmp")).unwrap().count(),
        0,
        "cleared at open"
    );

    *reg.faults.lock().unwrap() = Fault::None;
    let img = store
        .pull(&reference, &opts(&reg.addr, None))
        .await
        .unwrap();
    assert_eq!(img.digest, md);
}

/// A store that does not keep layer blobs: pulls verify them on the way and keep only the
/// unpacked layers; pulling or importing again fetches and copies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_layer_blobs() {
    let work = tempfile::tempdir().unwrap();
    let layout_dir = work.path().join("layout");
    let md = layout(&layout_dir);
    let reg = FakeRegistry::start(&layout_dir, AuthMode::None).await;
    let reference = format!("{}/tug/app:1", reg.addr);
    let data = work.path().join("data");
    let store = ImageStore::open(&data).unwrap().keep_layer_blobs(false);
    let blobs = || {
        fs::read_dir(data.join("images/blobs/sha256"))
            .unwrap()
            .count()
    };

    let img = store
        .pull(&reference, &opts(&reg.addr, None))
        .await
        .unwrap();
    assert_eq!(img.digest, md);
    assert_eq!(blobs(), 2, "manifest and config only");
    assert!(img.layers[0].join("big").is_file());

    let before = reg.blob_gets.load(Ordering::SeqCst);
    store
        .pull(&reference, &opts(&reg.addr, None))
        .await
        .unwrap();
    assert_eq!(
        reg.blob_gets.load(Ordering::SeqCst),
        before,
        "nothing fetched again"
    );

    // A corrupt layer is still refused: it is verified though not kept.
    *reg.faults.lock().unwrap() = Fault::Corrupt;
    let fresh = ImageStore::open(&work.path().join("fresh"))
        .unwrap()
        .keep_layer_blobs(false);
    let o = PullOptions {
        download_retries: Some(0),
        ..opts(&reg.addr, None)
    };
    let err = fresh.pull(&reference, &o).await.unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { .. } | Error::TarStream { .. }),
        "{err}"
    );
    assert!(fresh.list().unwrap().is_empty());

    // Import of the same image: no layer blob copied in.
    let imported = store.import(&layout_dir).unwrap();
    assert_eq!(imported[0].digest, md);
    assert_eq!(blobs(), 2);
}
