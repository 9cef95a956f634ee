//! `tugboat image ...`: the image store's commands, through tugboat's own command line, on a
//! data dir of the test's own (root: layers are unpacked with their owners and devices).

mod host;

use std::process::Command;

fn tugboat(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tugboat"))
        .arg("--data-dir")
        .arg(data)
        .arg("image")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn image_import_ls_inspect_rm_prune() {
    skip_unless_possible!("image_import_ls_inspect_rm_prune");
    let layout = host::shop_images().join("oci/shop-catalog");
    let data = tempfile::tempdir().unwrap();
    let out = tugboat(data.path(), &["import", layout.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let ls = tugboat(data.path(), &["ls"]);
    assert!(ls.status.success(), "{}", text(&ls));
    let listing = String::from_utf8_lossy(&ls.stdout).to_string();
    let reference = listing
        .lines()
        .find(|l| l.contains("catalog"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the imported image is not listed: {listing}"))
        .to_string();
    let inspect = tugboat(data.path(), &["inspect", &reference]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert!(v.to_string().contains("sha256:"), "{v}");
    // A reference that is not there is named.
    let missing = tugboat(data.path(), &["inspect", "no-such-image:1"]);
    assert!(
        !missing.status.success() && text(&missing).contains("no-such-image"),
        "{}",
        text(&missing)
    );
    let rm = tugboat(data.path(), &["rm", &reference]);
    assert!(rm.status.success(), "{}", text(&rm));
    let ls = tugboat(data.path(), &["ls"]);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("catalog"),
        "{}",
        text(&ls)
    );
    let prune = tugboat(data.path(), &["prune"]);
    assert!(prune.status.success(), "{}", text(&prune));
}
