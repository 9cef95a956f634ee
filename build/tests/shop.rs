//! The shop's Dockerfiles (examples/shop/*/Dockerfile) build the images the shop runs: each
//! service's entrypoint, environment and labels, the shop binary executable by all at
//! /bin/shop, a healthz file and busybox's applets; a second build of all six is all cache.
//! The context holds busybox-static named `shop`, standing in for the static shop binary
//! that examples/shop/build.sh compiles (this test checks the Dockerfiles and the builder,
//! not the shop; orchestrator/tests/shop.rs runs the real one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tug_build::view::View;
use tug_build::{build, BuildOptions};
use tug_image::ImageStore;

fn tug() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("tug");
    p.is_file().then_some(p)
}

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (overlay mounts, containers)");
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs busybox-static at /bin/busybox");
    }
    if tug().is_none() {
        return Some("needs the tug binary (cargo build -p tug-runtime --bin tug)");
    }
    None
}

const SERVICES: [&str; 5] = ["front", "catalog", "cart", "orders", "payments"];

fn build_all(shop: &Path, base_ctx: &Path, shop_ctx: &Path, data: &Path) -> usize {
    let opts = |context: PathBuf, dockerfile: Option<PathBuf>, tag: &str| BuildOptions {
        context,
        dockerfile,
        tags: vec![tag.to_string()],
        build_args: BTreeMap::new(),
        target: None,
        output: None,
        data_dir: data.to_path_buf(),
        tug: tug(),
        quiet: true,
    };
    let mut built = build(&opts(
        base_ctx.to_path_buf(),
        Some(shop.join("base/Dockerfile")),
        "shop/base:1",
    ))
    .unwrap()
    .layers_built;
    for svc in SERVICES {
        built += build(&opts(
            shop_ctx.to_path_buf(),
            Some(shop.join(svc).join("Dockerfile")),
            &format!("shop/{svc}:1"),
        ))
        .unwrap()
        .layers_built;
    }
    built
}

#[test]
fn shop_dockerfiles_build_the_shop_images() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let dir = tempfile::Builder::new().prefix("tugb").tempdir().unwrap();
    let base_ctx = dir.path().join("base");
    std::fs::create_dir_all(&base_ctx).unwrap();
    std::fs::copy("/bin/busybox", base_ctx.join("busybox")).unwrap();
    let shop_ctx = dir.path().join("shop");
    std::fs::create_dir_all(&shop_ctx).unwrap();
    std::fs::copy("/bin/busybox", shop_ctx.join("shop")).unwrap();
    let data = dir.path().join("data");
    assert!(build_all(&shop, &base_ctx, &shop_ctx, &data) > 0);
    let store = ImageStore::open(&data).unwrap();
    for svc in SERVICES {
        let image = store.resolve(&format!("shop/{svc}:1")).unwrap();
        let c = &image.config;
        assert_eq!(c.entrypoint, vec!["/bin/shop".to_string(), svc.to_string()]);
        assert_eq!(
            c.env,
            vec!["PATH=/bin".to_string(), format!("SHOP_SERVICE={svc}")]
        );
        assert_eq!(c.working_dir.as_deref(), Some("/www"));
        assert_eq!(c.exposed_ports, vec!["80/tcp"]);
        assert_eq!(
            c.labels.get("org.opencontainers.image.title"),
            Some(&format!("shop-{svc}"))
        );
        let view = View::new(image.layers.clone());
        assert_eq!(view.read(Path::new("www/healthz")).unwrap(), b"ok\n");
        assert!(view.read(Path::new("bin/sh")).is_some(), "applet link");
        assert!(view.read(Path::new("etc/passwd")).is_some());
        let binary = view.lookup(Path::new("bin/shop")).expect("/bin/shop");
        use std::os::unix::fs::PermissionsExt;
        assert!(
            binary.meta.permissions().mode() & 0o005 == 0o005,
            "{svc}: /bin/shop not readable and executable by all"
        );
    }
    let started = Instant::now();
    assert_eq!(
        build_all(&shop, &base_ctx, &shop_ctx, &data),
        0,
        "all cached"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "six cached builds took {took:?}"
    );
}
