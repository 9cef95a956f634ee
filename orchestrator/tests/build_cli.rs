//! `tugboat build` through tugboat's own command line: the image lands in the store under
//! --data-dir, where `tugboat image` (and the agent) find it; errors name the line; `--oci`
//! writes a layout. (RUN steps and the rest are tested in build/tests.)

mod host;

use std::process::Command;

fn tugboat(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tugboat"))
        .arg("--data-dir")
        .arg(data)
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
fn build_stores_the_image_where_image_commands_look() {
    skip_unless_possible!("build_stores_the_image_where_image_commands_look");
    let dir = tempfile::Builder::new().prefix("tgbb").tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM scratch\nARG WHO\nCOPY hello.txt /hello.txt\nLABEL who=$WHO\nCMD [\"/hello.txt\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let oci = dir.path().join("layout");
    let ctx_s = ctx.to_str().unwrap();
    let out = tugboat(
        &data,
        &[
            "build",
            "-q",
            "-t",
            "test/cli:1",
            "--build-arg",
            "WHO=cli",
            "--oci",
            oci.to_str().unwrap(),
            ctx_s,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{}", text(&out));
    let inspect = tugboat(&data, &["image", "inspect", "test/cli:1"]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["config"]["cmd"], serde_json::json!(["/hello.txt"]));
    assert_eq!(v["config"]["labels"]["who"], "cli");
    assert!(oci.join("index.json").is_file());
    // Again: all from the cache, the same image.
    let again = tugboat(
        &data,
        &["build", "-t", "test/cli:1", "--build-arg", "WHO=cli", ctx_s],
    );
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), digest);
    assert!(
        text(&again).contains("0 layers built, 1 from cache"),
        "{}",
        text(&again)
    );
    // A bad file: non-zero exit, the error names the file and line.
    std::fs::write(ctx.join("Bad"), "FROM scratch\nCOPY missing /x\n").unwrap();
    let bad = tugboat(
        &data,
        &["build", "-f", ctx.join("Bad").to_str().unwrap(), ctx_s],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("Bad:2: COPY: source \"missing\" not found in context"),
        "{}",
        text(&bad)
    );
}
