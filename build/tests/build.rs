//! `tugboat build`'s library, for real, as root: RUN steps run in `tug` containers, layers
//! land in a data dir of the test's own. Tests that cannot run here say why and skip.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tug_build::view::View;
use tug_build::{build, BuildError, BuildOptions, BuildReport};
use tug_image::ImageStore;

/// Why this host cannot run the tests, if it cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (overlay mounts, containers)".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs busybox-static at /bin/busybox".into());
    }
    if tug().is_none() {
        return Some(
            "needs the tug binary next to the test's target dir (cargo build -p tug-runtime --bin tug)"
                .into(),
        );
    }
    None
}

macro_rules! skip_unless_possible {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn tug() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("tug");
    p.is_file().then_some(p)
}

/// A context dir and a data dir of the test's own.
struct Env {
    dir: tempfile::TempDir,
    _turn: Turn,
}

/// The tests of this file run side by side, except one that counts the machine's network
/// namespaces before and after its build: a RUN step of another test would be counted.
static RUNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum Turn {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

const BASE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

impl Env {
    fn new() -> Env {
        Env::with(Turn::Shared(RUNS.read().unwrap_or_else(|p| p.into_inner())))
    }

    /// An Env whose test runs alone in this binary.
    fn alone() -> Env {
        Env::with(Turn::Alone(RUNS.write().unwrap_or_else(|p| p.into_inner())))
    }

    fn with(turn: Turn) -> Env {
        let dir = tempfile::Builder::new().prefix("tugb").tempdir().unwrap();
        fs::create_dir_all(dir.path().join("ctx")).unwrap();
        fs::create_dir_all(dir.path().join("data")).unwrap();
        let env = Env { dir, _turn: turn };
        fs::copy("/bin/busybox", env.ctx().join("busybox")).unwrap();
        env
    }

    fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.ctx().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn opts(&self, dockerfile: &str, tag: &str) -> BuildOptions {
        self.write("Dockerfile", dockerfile);
        BuildOptions {
            context: self.ctx(),
            dockerfile: None,
            tags: vec![tag.to_string()],
            build_args: BTreeMap::new(),
            target: None,
            output: None,
            data_dir: self.data(),
            tug: tug(),
            quiet: true,
        }
    }

    fn build(&self, dockerfile: &str, tag: &str) -> Result<BuildReport, BuildError> {
        build(&self.opts(dockerfile, tag))
    }

    fn store(&self) -> ImageStore {
        ImageStore::open(&self.data()).unwrap()
    }

    /// The image config document of a stored image.
    fn config(&self, reference: &str) -> Value {
        let store = self.store();
        let d = store.inspect(reference).unwrap();
        let raw = store
            .content()
            .read_document(&d.config_digest.parse().unwrap())
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    /// A view of a stored image's filesystem.
    fn view(&self, reference: &str) -> View {
        View::new(self.store().resolve(reference).unwrap().layers)
    }

    fn read(&self, reference: &str, path: &str) -> Option<String> {
        self.view(reference)
            .read(Path::new(path.trim_start_matches('/')))
            .map(|d| String::from_utf8_lossy(&d).into_owned())
    }

    fn build_layers(&self) -> usize {
        fs::read_dir(self.data().join("build/layers/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn tmp_entries(&self) -> Vec<PathBuf> {
        fs::read_dir(self.data().join("build/tmp"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .map(str::to_string)
        .collect()
}

/// Every network namespace any process is in (by inode), and the named ones.
fn netns_inodes() -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(l) = fs::read_link(e.path().join("ns/net")) {
            out.insert(l.to_string_lossy().into_owned());
        }
    }
    if let Ok(d) = fs::read_dir("/run/netns") {
        for e in d.flatten() {
            out.insert(format!("named:{}", e.file_name().to_string_lossy()));
        }
    }
    out
}

#[test]
fn every_instruction_reaches_the_image() {
    skip_unless_possible!();
    let env = Env::new();
    env.write("app/hello.txt", "hello\n");
    env.write("app/sub/deep.txt", "deep\n");
    env.write(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/sh\n",
    );
    env.write("etc/group", "root:x:0:\nwww:x:33:\n");
    // A tar archive for ADD to extract.
    let mut tarball = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(6);
    h.set_mode(0o644);
    tarball
        .append_data(&mut h, "pkg/inside.txt", &b"inside"[..])
        .unwrap();
    fs::write(env.ctx().join("pkg.tar"), tarball.into_inner().unwrap()).unwrap();
    let dockerfile = format!(
        r#"{BASE}
# comments and continuations
ARG GREETING=hi
ARG FROMCLI
COPY etc/ /etc/
ENV APP_HOME=/www \
    MODE="two words"
LABEL org.example.name="shop item" version=1
EXPOSE 80 53/udp
WORKDIR $APP_HOME
COPY --chown=www:www app/ ./
ADD pkg.tar /opt/
RUN mkdir -m 1777 /tmp && echo "$GREETING $FROMCLI $MODE" > /www/args.txt && id -u > /www/uid-root.txt
USER www
RUN id -u > /tmp/uid.txt; pwd > /tmp/pwd.txt
USER root
RUN cp /tmp/uid.txt /tmp/pwd.txt /www/
COPY app/hello.txt /gone.txt
RUN cp /opt/pkg/inside.txt /inside-copy && rm /gone.txt && rm -rf /opt/pkg && mkdir /opt/pkg && echo new > /opt/pkg/new.txt
SHELL ["/bin/sh", "-ec"]
VOLUME ["/data"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/httpd", "-f"]
CMD ["-p", "80"]
"#
    );
    let mut opts = env.opts(&dockerfile, "test/every:1");
    opts.build_args.insert("FROMCLI".into(), "cli".into());
    let report = build(&opts).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let r = "test/every:1";
    let c = env.config(r);
    let cfg = &c["config"];
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/bin/httpd", "-f"]));
    assert_eq!(cfg["Cmd"], serde_json::json!(["-p", "80"]));
    assert_eq!(cfg["WorkingDir"], "/www");
    assert_eq!(cfg["User"], "root");
    assert_eq!(cfg["StopSignal"], "SIGTERM");
    let env_list: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env_list.contains(&"APP_HOME=/www"), "{env_list:?}");
    assert!(env_list.contains(&"MODE=two words"), "{env_list:?}");
    assert!(
        !env_list.iter().any(|e| e.starts_with("GREETING")),
        "ARG is not ENV"
    );
    assert!(cfg["ExposedPorts"]["80/tcp"].is_object(), "{cfg}");
    assert!(cfg["ExposedPorts"]["53/udp"].is_object(), "{cfg}");
    assert_eq!(cfg["Labels"]["org.example.name"], "shop item");
    assert_eq!(cfg["Labels"]["version"], "1");
    assert!(cfg["Volumes"]["/data"].is_object(), "{cfg}");
    // The filesystem: COPY of a directory's contents with --chown, ADD extracting, RUN's
    // view of ARG/ENV, USER and WORKDIR.
    let view = env.view(r);
    let hello = view.lookup(Path::new("www/hello.txt")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((hello.meta.uid(), hello.meta.gid()), (33, 33));
    assert_eq!(env.read(r, "/www/sub/deep.txt").unwrap(), "deep\n");
    // A RUN's deletions: a whiteout for the file, an opaque directory for the re-made one.
    assert_eq!(
        env.read(r, "/inside-copy").unwrap(),
        "inside",
        "ADD extracted"
    );
    assert!(env.read(r, "/gone.txt").is_none());
    assert!(env.read(r, "/opt/pkg/inside.txt").is_none());
    assert_eq!(env.read(r, "/opt/pkg/new.txt").unwrap(), "new\n");
    assert_eq!(env.read(r, "/www/args.txt").unwrap(), "hi cli two words\n");
    assert_eq!(env.read(r, "/www/uid-root.txt").unwrap(), "0\n");
    assert_eq!(env.read(r, "/www/uid.txt").unwrap(), "33\n");
    assert_eq!(env.read(r, "/www/pwd.txt").unwrap(), "/www\n");
    // The agent's view of the image.
    let image = env.store().resolve(r).unwrap();
    assert_eq!(image.config.working_dir.as_deref(), Some("/www"));
    assert_eq!(image.config.entrypoint, vec!["/bin/httpd", "-f"]);
}

#[test]
fn second_build_is_all_cache_and_a_change_rebuilds_from_its_step() {
    skip_unless_possible!();
    let env = Env::new();
    env.write("a.txt", "one\n");
    env.write("b.txt", "two\n");
    let dockerfile =
        format!("{BASE}COPY a.txt /a.txt\nRUN cat /a.txt > /copy-a\nCOPY b.txt /b.txt\nRUN cat /b.txt > /copy-b\n");
    let first = env.build(&dockerfile, "test/cache:1").unwrap();
    assert_eq!(first.layers_built, 6, "{first:?}");
    let layers = env.build_layers();
    let started = Instant::now();
    let second = env.build(&dockerfile, "test/cache:1").unwrap();
    let took = started.elapsed();
    assert_eq!(second.layers_built, 0, "{second:?}");
    assert_eq!(second.cache_hits, 6);
    assert_eq!(
        second.digest, first.digest,
        "nothing changed: the same image"
    );
    assert_eq!(env.build_layers(), layers, "no new layer");
    assert!(took < Duration::from_secs(1), "warm build took {took:?}");
    // Touching without changing the content is still a hit (the key is the content).
    env.write("b.txt", "two\n");
    assert_eq!(
        env.build(&dockerfile, "test/cache:1").unwrap().layers_built,
        0
    );
    // Changing b.txt: its COPY and the RUN after it are rebuilt, nothing before.
    env.write("b.txt", "changed\n");
    let third = env.build(&dockerfile, "test/cache:1").unwrap();
    assert_eq!((third.cache_hits, third.layers_built), (4, 2), "{third:?}");
    assert_eq!(env.read("test/cache:1", "/copy-b").unwrap(), "changed\n");
    // Changing a.txt rebuilds from the first COPY.
    env.write("a.txt", "uno\n");
    let fourth = env.build(&dockerfile, "test/cache:1").unwrap();
    assert_eq!(
        (fourth.cache_hits, fourth.layers_built),
        (2, 4),
        "{fourth:?}"
    );
    // A changed instruction is a miss too.
    let edited = dockerfile.replace("> /copy-b", ">  /copy-b");
    let fifth = env.build(&edited, "test/cache:1").unwrap();
    assert_eq!((fifth.cache_hits, fifth.layers_built), (5, 1), "{fifth:?}");
    // A build argument used by a RUN is part of its key.
    let with_arg = format!("{BASE}ARG V=1\nRUN echo $V > /v\n");
    let mut o = env.opts(&with_arg, "test/arg:1");
    assert_eq!(build(&o).unwrap().layers_built, 1);
    assert_eq!(build(&o).unwrap().layers_built, 0);
    o.build_args.insert("V".into(), "2".into());
    assert_eq!(build(&o).unwrap().layers_built, 1);
    assert_eq!(env.read("test/arg:1", "/v").unwrap(), "2\n");
}

#[test]
fn multi_stage_copy_from_and_target() {
    skip_unless_possible!();
    let env = Env::new();
    env.write("src/main.txt", "source\n");
    let dockerfile = format!(
        "{}\nFROM scratch AS unused\nCOPY nothere /x\n\n{}",
        BASE.replacen("FROM scratch", "FROM scratch AS base", 1),
        "FROM base AS builder\nCOPY src/main.txt /src/\nRUN mkdir -p /out && tr a-z A-Z < /src/main.txt > /out/app && echo junk > /junk\n\
         FROM scratch AS final\nCOPY --from=builder /out/app /app\nCOPY --from=0 /bin/busybox /bin/busybox\n\
         FROM final AS debug\nCOPY --from=builder /junk /junk\n"
    );
    // `unused` would fail (no such source): only the stages the target needs are built.
    let mut o = env.opts(&dockerfile, "test/multi:final");
    o.target = Some("final".into());
    build(&o).unwrap();
    assert_eq!(env.read("test/multi:final", "/app").unwrap(), "SOURCE\n");
    assert!(env.read("test/multi:final", "/junk").is_none());
    assert!(env.read("test/multi:final", "/src/main.txt").is_none());
    let c = env.config("test/multi:final");
    assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    // The last stage (default target) builds on `final`.
    let mut o = env.opts(&dockerfile, "test/multi:debug");
    o.target = None;
    build(&o).unwrap();
    assert_eq!(env.read("test/multi:debug", "/junk").unwrap(), "junk\n");
    assert_eq!(env.read("test/multi:debug", "/app").unwrap(), "SOURCE\n");
    // An unknown target is named.
    o.target = Some("nope".into());
    let e = build(&o).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn dockerignore_keeps_files_out_of_copy() {
    skip_unless_possible!();
    let env = Env::new();
    env.write("keep.txt", "keep\n");
    env.write("secret.key", "secret\n");
    env.write("logs/a.log", "log\n");
    env.write("logs/important.log", "important\n");
    env.write("sub/x.tmp", "tmp\n");
    env.write(
        ".dockerignore",
        "# not for the image\n*.key\nlogs\n!logs/important.log\n**/*.tmp\nbusybox\n",
    );
    env.build("FROM scratch\nCOPY . /ctx/\n", "test/ignore:1")
        .unwrap();
    let r = "test/ignore:1";
    assert_eq!(env.read(r, "/ctx/keep.txt").unwrap(), "keep\n");
    assert!(env.read(r, "/ctx/secret.key").is_none());
    assert!(env.read(r, "/ctx/logs/a.log").is_none());
    assert_eq!(
        env.read(r, "/ctx/logs/important.log").unwrap(),
        "important\n"
    );
    assert!(env.read(r, "/ctx/sub/x.tmp").is_none());
    assert!(env.read(r, "/ctx/busybox").is_none());
    // An ignored file named directly is not found.
    let e = env
        .build("FROM scratch\nCOPY secret.key /k\n", "test/ignore:2")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Dockerfile:2: COPY: source \"secret.key\" not found in context"),
        "{e}"
    );
    // A changed ignored file does not break the cache.
    let before = env.build_layers();
    env.write("secret.key", "other\n");
    let again = env
        .build("FROM scratch\nCOPY . /ctx/\n", "test/ignore:1")
        .unwrap();
    assert_eq!(again.layers_built, 0);
    assert_eq!(env.build_layers(), before);
}

#[test]
fn bad_dockerfiles_name_their_line() {
    skip_unless_possible!();
    let env = Env::new();
    let cases = [
        (
            "FROM scratch\n\nFOO bar\n",
            "Dockerfile:3: unknown instruction \"FOO\"",
        ),
        (
            "# no base\nRUN true\n",
            "Dockerfile:2: RUN: no FROM before this instruction",
        ),
        ("", "no FROM instruction"),
        (
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY --chown=nobody busybox /x\n",
            "Dockerfile:3: COPY: bad --chown \"nobody\"",
        ),
        (
            "FROM scratch\n# comment\nCOPY x /x\n",
            "Dockerfile:3: COPY: source \"x\" not found in context",
        ),
        (
            "FROM scratch\nCOPY ../outside /x\n",
            "Dockerfile:2: COPY: source \"../outside\" is outside the build context",
        ),
        (
            "FROM scratch\nADD https://example.com/x.tar /x\n",
            "Dockerfile:2: ADD: remote source",
        ),
        (
            "FROM no-such-image:1\n",
            "Dockerfile:1: FROM: image \"no-such-image:1\" is not in the image store",
        ),
        (
            "FROM scratch\nEXPOSE http\n",
            "Dockerfile:2: EXPOSE: invalid port",
        ),
    ];
    for (text, want) in cases {
        let e = env.build(text, "test/bad:1").unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    assert!(
        env.store().resolve("test/bad:1").is_err(),
        "no image stored"
    );
    // -f names the file as given.
    env.write("other.Containerfile", "FROM scratch\nBOGUS\n");
    let mut o = env.opts("FROM scratch\n", "test/bad:2");
    o.dockerfile = Some(PathBuf::from("other.Containerfile"));
    let e = build(&o).unwrap_err().to_string();
    assert!(
        e.starts_with("other.Containerfile:2: unknown instruction"),
        "{e}"
    );
}

#[test]
fn failed_run_leaves_nothing_behind() {
    skip_unless_possible!();
    // Alone: it counts every network namespace of the machine.
    let env = Env::alone();
    // The base first, so what the failed build makes is its own.
    env.build(BASE, "test/base:1").unwrap();
    let mounts = mounts_under(env.dir.path());
    let netns = netns_inodes();
    let layers = env.build_layers();
    let dockerfile = "FROM test/base:1\nRUN echo partial > /partial\nRUN echo going; exit 3\n";
    let e = env.build(dockerfile, "test/fails:1").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("Dockerfile:3: RUN"), "{msg}");
    assert!(msg.contains("exited with code 3"), "{msg}");
    assert!(matches!(e, BuildError::RunFailed { code: 3, .. }), "{e:?}");
    assert_eq!(mounts_under(env.dir.path()), mounts, "no mount left");
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    // The runtime state root was in tmp/: no container; no cgroup of ours.
    for base in [
        "/sys/fs/cgroup/tug",
        "/sys/fs/cgroup/memory/tug",
        "/sys/fs/cgroup/pids/tug",
    ] {
        if let Ok(d) = fs::read_dir(base) {
            for e in d.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !n.starts_with(&format!("tug-build-{}-", std::process::id())),
                    "cgroup {n} left in {base}"
                );
            }
        }
    }
    let after = netns_inodes();
    let new: Vec<_> = after.difference(&netns).collect();
    assert!(new.is_empty(), "network namespaces left: {new:?}");
    assert!(env.store().resolve("test/fails:1").is_err(), "no image");
    // The step before the failure is cached (as in Docker); nothing else was made.
    assert_eq!(env.build_layers(), layers + 1);
    // A command that is not there fails the same way.
    let e = env
        .build(
            "FROM test/base:1\nRUN [\"/no/such/program\"]\n",
            "test/fails:2",
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("Dockerfile:2: RUN"), "{e}");
    assert!(env.tmp_entries().is_empty());
    assert_eq!(mounts_under(env.dir.path()), mounts);
}

#[test]
fn run_has_only_loopback_and_no_host_network() {
    skip_unless_possible!();
    let env = Env::new();
    env.build(
        &format!("{BASE}RUN mkdir -p /out && tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > /out/links && ip -o link show lo > /out/lo\n"),
        "test/net:1",
    )
    .unwrap();
    assert_eq!(env.read("test/net:1", "/out/links").unwrap(), "lo\n");
    let lo = env.read("test/net:1", "/out/lo").unwrap();
    assert!(lo.contains("UP"), "loopback is up: {lo}");
}

#[test]
fn image_runs_with_tug() {
    skip_unless_possible!();
    let env = Env::new();
    env.write(
        "greet.sh",
        "#!/bin/sh\necho \"$GREETING from $(pwd) as $(id -u)\"\n",
    );
    env.build(
        &format!("{BASE}COPY --chmod=755 greet.sh /app/greet.sh\nENV GREETING=hello\nWORKDIR /app\nENTRYPOINT [\"/bin/sh\"]\nCMD [\"/app/greet.sh\"]\n"),
        "test/run:1",
    )
    .unwrap();
    let store = env.store();
    let image = store.resolve("test/run:1").unwrap();
    let id = format!("tugb-run-{}", std::process::id());
    let rootfs = store.prepare_rootfs(&image, &id).unwrap();
    let bundle = env.dir.path().join("bundle");
    fs::create_dir_all(&bundle).unwrap();
    let mut spec = serde_json::to_value(tug_runtime::spec::default_spec()).unwrap();
    spec["root"] = serde_json::json!({"path": rootfs.path, "readonly": false});
    let args: Vec<String> = image
        .config
        .entrypoint
        .iter()
        .chain(&image.config.cmd)
        .cloned()
        .collect();
    spec["process"]["args"] = serde_json::json!(args);
    let mut envs = vec!["PATH=/bin".to_string()];
    envs.extend(image.config.env.clone());
    spec["process"]["env"] = serde_json::json!(envs);
    spec["process"]["cwd"] = serde_json::json!(image.config.working_dir.clone().unwrap());
    fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let state = env.dir.path().join("state");
    let out = Command::new(tug().unwrap())
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .output()
        .unwrap();
    store.remove_rootfs(&id).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from /app as 0\n"
    );
}

#[test]
fn oci_output_as_archive_and_layout() {
    skip_unless_possible!();
    let env = Env::new();
    // An ARG before FROM, set with --build-arg, names the base.
    let dockerfile = format!(
        "ARG FIRST=nothere\n{}LABEL a=b\n",
        BASE.replace("FROM scratch", "FROM ${FIRST}")
    );
    let mut o = env.opts(&dockerfile, "test/out:1");
    o.build_args.insert("FIRST".into(), "scratch".into());
    let archive = env.dir.path().join("image.tar");
    o.output = Some(archive.clone());
    let report = build(&o).unwrap();
    // The archive imports into another store as the same image.
    let other = env.dir.path().join("other");
    let store = ImageStore::open(&other).unwrap();
    let images = store.import(&archive).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].digest, report.digest);
    let layout = env.dir.path().join("layout");
    o.output = Some(layout.clone());
    build(&o).unwrap();
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], report.digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "test/out:1"
    );
    let hex = report.digest.trim_start_matches("sha256:");
    assert!(layout.join("blobs/sha256").join(hex).is_file());
}
