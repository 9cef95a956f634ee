//! Root test: README.md's "Run your own services" path, start to finish, as
//! tests/run-your-own.sh follows it (install into a temp PREFIX, import the shop's images,
//! `tugboat up` in a network namespace of its own, open the shop, change it, add a service,
//! Ctrl-C). The script builds the debug binaries this test was built with.

mod host;

use std::path::Path;
use std::process::Command;

#[test]
fn the_readme_path_from_install_to_a_service_of_your_own() {
    skip_unless_possible!("the_readme_path_from_install_to_a_service_of_your_own");
    if Command::new("cargo").arg("--version").output().is_err() {
        eprintln!("SKIPPED the_readme_path_from_install_to_a_service_of_your_own: no cargo on PATH to build the install");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // target/debug/tugboat: the install builds (and finds) the binaries there.
    let target = Path::new(env!("CARGO_BIN_EXE_tugboat"))
        .parent()
        .and_then(Path::parent)
        .unwrap();
    let out = Command::new("bash")
        .arg(repo.join("tests/run-your-own.sh"))
        .env("PROFILE", "debug")
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "tests/run-your-own.sh failed:\n{text}"
    );
    assert!(text.contains("run-your-own.sh: ok:"), "{text}");
}
