//! Running the instructions of each stage: the image config as it evolves, the layers, and
//! the cache.
//!
//! Every instruction extends the stage's *chain*: `sha256(previous chain, what the
//! instruction does with its variables expanded, and for COPY/ADD the digest of the
//! content it reads)`. A stage starts from the base image's manifest digest (or `scratch`,
//! or the chain of the stage it is built on). A step that makes a layer (RUN, COPY, ADD,
//! WORKDIR of a new directory) looks its chain up in `cache/`: a hit reuses the layer, a
//! miss makes it and records it. So a change invalidates its own step and everything after
//! it, and nothing before.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tug_image::digest::{Algorithm, Hasher};
use tug_image::ImageStore;

use crate::config::RunDefaults;
use crate::context::Context;
use crate::copy;
use crate::dockerfile::{Command, Instruction, Step};
use crate::error::BuildError;
use crate::layer::{add_dir, add_upper_tree, BuildDirs, EntryMeta, LayerRef};
use crate::run::{self, RunRequest};
use crate::view::{self, View};
use crate::words::{self, Vars};

/// A stage being built (or built).
#[derive(Debug, Clone)]
pub struct Stage {
    pub alias: Option<String>,
    pub layers: Vec<LayerRef>,
    /// The base image's config document (fields we do not manage are kept).
    pub base_config: Value,
    pub defaults: RunDefaults,
    pub history: Vec<Value>,
    pub chain: String,
    /// ARGs declared in this stage with their values.
    pub args: Vars,
    /// The newest layer's creation time.
    pub created: Option<String>,
    /// A CMD was given in this stage (an ENTRYPOINT after it keeps it).
    pub cmd_in_stage: bool,
}

impl Stage {
    pub fn view(&self) -> View {
        View::new(self.layers.iter().map(|l| l.dir.clone()).collect())
    }

    fn vars(&self) -> Vars {
        let mut v = self.args.clone();
        for (k, val) in &self.defaults.env {
            v.insert(k.clone(), val.clone());
        }
        v
    }

    fn extend_chain(&mut self, what: &str) {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(self.chain.as_bytes());
        h.update(b"\n");
        h.update(what.as_bytes());
        self.chain = h.finish().hex().to_string();
    }

    fn history(&mut self, step: &Step, created: Option<&str>) {
        let by = format!("{} {}", step.keyword, step.text);
        self.history.push(match created {
            Some(c) => json!({"created": c, "created_by": by}),
            None => json!({"created_by": by, "empty_layer": true}),
        });
    }
}

/// What the cache keeps for a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheRecord {
    layer: LayerRef,
    created: String,
}

/// Everything a build's steps share.
pub struct Builder<'a> {
    pub file: String,
    pub dirs: &'a BuildDirs,
    pub store: &'a ImageStore,
    pub context: &'a Context,
    pub build_args: &'a BTreeMap<String, String>,
    pub meta_args: Vars,
    pub used_args: HashSet<String>,
    pub tug: Option<PathBuf>,
    pub quiet: bool,
    pub layers_built: usize,
    pub cache_hits: usize,
    pub step_no: usize,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Builder<'_> {
    fn err(&self, step: &Step, message: impl std::fmt::Display) -> BuildError {
        BuildError::Step {
            file: self.file.clone(),
            line: step.line,
            message: format!("{}: {message}", step.keyword),
        }
    }

    fn say(&self, s: &str) {
        if !self.quiet {
            eprintln!("{s}");
        }
    }

    fn cached(&self, chain: &str) -> Option<CacheRecord> {
        let p = self.dirs.root.join("cache").join(format!("{chain}.json"));
        let rec: CacheRecord = serde_json::from_slice(&fs::read(p).ok()?).ok()?;
        let ok = self.dirs.blob_path(&rec.layer.blob).is_file() && rec.layer.dir.is_dir();
        ok.then_some(rec)
    }

    fn remember(&self, chain: &str, rec: &CacheRecord) -> Result<(), BuildError> {
        let p = self.dirs.root.join("cache").join(format!("{chain}.json"));
        let tmp = self.dirs.tmp_path("cache");
        let _g = crate::layer::Scratch(tmp.clone());
        fs::write(&tmp, serde_json::to_vec(rec).expect("json"))
            .map_err(|e| BuildError::io(&tmp, e))?;
        fs::rename(&tmp, &p).map_err(|e| BuildError::io(&p, e))
    }

    /// A layer step: reuse the cached layer of `stage.chain`, or make it with `make`.
    fn layer_step(
        &mut self,
        stage: &mut Stage,
        step: &Step,
        make: impl FnOnce(&mut Self, &Stage) -> Result<LayerRef, BuildError>,
    ) -> Result<(), BuildError> {
        let rec = match self.cached(&stage.chain) {
            Some(rec) => {
                self.cache_hits += 1;
                self.say(" --> cached");
                rec
            }
            None => {
                let layer = make(self, stage)?;
                self.layers_built += 1;
                self.say(&format!(" --> layer {}", layer.diff_id));
                let rec = CacheRecord {
                    layer,
                    created: now_rfc3339(),
                };
                self.remember(&stage.chain, &rec)?;
                rec
            }
        };
        stage.history(step, Some(&rec.created));
        stage.created = Some(rec.created.clone());
        stage.layers.push(rec.layer);
        Ok(())
    }

    /// The first stage state from `FROM image` (a store image, `scratch` or a stage).
    pub fn from(
        &mut self,
        step: &Step,
        image: &str,
        alias: Option<String>,
        stages: &[Option<Stage>],
        names: &[Option<String>],
    ) -> Result<Stage, BuildError> {
        let image = words::expand(image, &self.meta_args).map_err(|e| self.err(step, e))?;
        let lower = image.to_ascii_lowercase();
        if let Some(i) = names
            .iter()
            .position(|n| n.as_deref() == Some(lower.as_str()))
        {
            let mut s = stages[i]
                .clone()
                .ok_or_else(|| self.err(step, format!("stage {lower:?} was not built")))?;
            s.alias = alias;
            s.args = Vars::new();
            s.cmd_in_stage = false;
            return Ok(s);
        }
        if lower == "scratch" {
            let p = tug_image::Platform::host();
            return Ok(Stage {
                alias,
                layers: Vec::new(),
                base_config: json!({"architecture": p.architecture, "os": p.os}),
                defaults: RunDefaults::default(),
                history: Vec::new(),
                chain: "scratch".into(),
                args: Vars::new(),
                created: None,
                cmd_in_stage: false,
            });
        }
        let (details, layers, config) = self.store_image(&image).map_err(|e| {
            self.err(
                step,
                format!("image {image:?} is not in the image store ({e}); pull or import it first"),
            )
        })?;
        let defaults = RunDefaults::from_config(&config["config"]);
        let history = config["history"].as_array().cloned().unwrap_or_default();
        let created = config["created"].as_str().map(str::to_string);
        Ok(Stage {
            alias,
            layers,
            base_config: config,
            defaults,
            history,
            chain: format!("image {}", details.digest),
            args: Vars::new(),
            created,
            cmd_in_stage: false,
        })
    }

    /// A store image's details, layers and raw config document.
    pub fn store_image(
        &self,
        reference: &str,
    ) -> Result<(tug_image::ImageDetails, Vec<LayerRef>, Value), BuildError> {
        let image = self.store.resolve(reference)?;
        let details = self.store.inspect(reference)?;
        let layers = details
            .layers
            .iter()
            .zip(&image.layers)
            .map(|(l, dir)| -> Result<LayerRef, BuildError> {
                Ok(LayerRef {
                    diff_id: l.diff_id.parse()?,
                    blob: l.blob.parse()?,
                    size: l.size,
                    media_type: l.media_type.clone(),
                    dir: dir.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config_digest: tug_image::Digest = details.config_digest.parse()?;
        let raw = self.store.content().read_document(&config_digest)?;
        let config: Value = serde_json::from_slice(&raw)
            .map_err(|e| BuildError::Other(format!("image config {config_digest}: {e}")))?;
        Ok((details, layers, config))
    }

    /// Run one instruction of a stage.
    pub fn step(
        &mut self,
        stage: &mut Stage,
        step: &Step,
        stages: &[Option<Stage>],
        names: &[Option<String>],
    ) -> Result<(), BuildError> {
        let vars = stage.vars();
        let e = |b: &Self, m: String| b.err(step, m);
        match &step.instruction {
            Instruction::From { .. } => unreachable!("FROM starts a stage"),
            Instruction::Arg(text) => {
                for w in words::split(text, &vars).map_err(|m| e(self, m))? {
                    let (name, default) = match w.split_once('=') {
                        Some((n, d)) => (n.to_string(), Some(d.to_string())),
                        None => (w.clone(), None),
                    };
                    let value = match self.build_args.get(&name) {
                        Some(v) => {
                            self.used_args.insert(name.clone());
                            Some(v.clone())
                        }
                        None => default.or_else(|| self.meta_args.get(&name).cloned()),
                    };
                    if let Some(v) = value {
                        stage.extend_chain(&format!("ARG {name}={v}"));
                        stage.args.insert(name, v);
                    }
                }
                stage.history(step, None);
            }
            Instruction::Env(text) => {
                for (k, v) in words::pairs(text, &vars, true).map_err(|m| e(self, m))? {
                    stage.extend_chain(&format!("ENV {k}={v}"));
                    stage.defaults.set_env(&k, &v);
                }
                stage.history(step, None);
            }
            Instruction::Label(text) => {
                for (k, v) in words::pairs(text, &vars, true).map_err(|m| e(self, m))? {
                    stage.extend_chain(&format!("LABEL {k}={v}"));
                    stage.defaults.labels.insert(k, v);
                }
                stage.history(step, None);
            }
            Instruction::User(text) => {
                let u = words::expand(text.trim(), &vars).map_err(|m| e(self, m))?;
                stage.extend_chain(&format!("USER {u}"));
                stage.defaults.user = u;
                stage.history(step, None);
            }
            Instruction::StopSignal(text) => {
                let s = words::expand(text.trim(), &vars).map_err(|m| e(self, m))?;
                stage.extend_chain(&format!("STOPSIGNAL {s}"));
                stage.defaults.stop_signal = Some(s);
                stage.history(step, None);
            }
            Instruction::Expose(text) => {
                for p in words::split(text, &vars).map_err(|m| e(self, m))? {
                    let (port, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                    let proto = proto.to_ascii_lowercase();
                    if port.parse::<u16>().map_or(true, |n| n == 0)
                        || !["tcp", "udp", "sctp"].contains(&proto.as_str())
                    {
                        return Err(e(self, format!("invalid port {p:?}")));
                    }
                    stage.extend_chain(&format!("EXPOSE {port}/{proto}"));
                    stage.defaults.exposed.insert(format!("{port}/{proto}"));
                }
                stage.history(step, None);
            }
            Instruction::Volume(text) => {
                let paths = match serde_json::from_str::<Vec<String>>(text.trim()) {
                    Ok(v) => v
                        .iter()
                        .map(|p| words::expand_plain(p, &vars))
                        .collect::<Result<Vec<_>, _>>(),
                    Err(_) => words::split(text, &vars),
                }
                .map_err(|m| e(self, m))?;
                for p in paths {
                    stage.extend_chain(&format!("VOLUME {p}"));
                    stage.defaults.volumes.insert(p);
                }
                stage.history(step, None);
            }
            Instruction::Shell(s) => {
                stage.extend_chain(&format!("SHELL {s:?}"));
                stage.defaults.shell = s.clone();
                stage.history(step, None);
            }
            Instruction::Cmd(c) => {
                let args = self.command_args(stage, c);
                stage.extend_chain(&format!("CMD {args:?}"));
                stage.defaults.cmd = Some(args);
                stage.history(step, None);
            }
            Instruction::Entrypoint(c) => {
                let args = self.command_args(stage, c);
                stage.extend_chain(&format!("ENTRYPOINT {args:?}"));
                stage.defaults.entrypoint = Some(args);
                // As Docker: a new ENTRYPOINT drops the CMD inherited from the base image
                // (a CMD of this stage is kept only if it comes after).
                if !stage.cmd_in_stage {
                    stage.defaults.cmd = None;
                }
                stage.history(step, None);
            }
            Instruction::Workdir(text) => {
                let w = words::expand(text.trim(), &vars).map_err(|m| e(self, m))?;
                let path = copy::image_path(&stage.defaults.workdir, &w);
                let abs = format!("/{}", path.display());
                stage.defaults.workdir = abs.clone();
                stage.extend_chain(&format!("WORKDIR {abs}"));
                let view = stage.view();
                let real = view.resolve(&path, true);
                if path.as_os_str().is_empty() || view.lookup(&real).is_some() {
                    stage.history(step, None);
                } else {
                    self.layer_step(stage, step, |b, _| {
                        b.dirs.write_layer(|tar| {
                            let mut p = PathBuf::new();
                            for c in real.components() {
                                p.push(c);
                                let m = match view.lookup(&p) {
                                    Some(f) if f.meta.is_dir() => EntryMeta::of(&f.meta),
                                    _ => EntryMeta {
                                        mode: 0o755,
                                        uid: 0,
                                        gid: 0,
                                        mtime: 0,
                                    },
                                };
                                add_dir(tar, &p, m)?;
                            }
                            Ok(())
                        })
                    })?;
                }
            }
            Instruction::Run(c) => self.run_step(stage, step, c)?,
            Instruction::Copy(spec) => self.copy_step(stage, step, spec, stages, names)?,
        }
        if let Instruction::Cmd(_) = step.instruction {
            stage.cmd_in_stage = true;
        }
        Ok(())
    }

    fn command_args(&self, stage: &Stage, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = stage.defaults.shell();
                v.push(s.clone());
                v
            }
        }
    }

    fn run_step(&mut self, stage: &mut Stage, step: &Step, c: &Command) -> Result<(), BuildError> {
        let args = self.command_args(stage, c);
        // The environment: PATH by default, the image's ENV, and the stage's ARGs that
        // ENV does not set (build arguments reach RUN, not the image).
        let mut env: Vec<(String, String)> = vec![(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        )];
        let mut set = |k: &str, v: &str| match env.iter_mut().find(|(n, _)| n == k) {
            Some(e) => e.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        };
        for (k, v) in &stage.args {
            set(k, v);
        }
        for (k, v) in &stage.defaults.env {
            set(k, v);
        }
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let cwd = if stage.defaults.workdir.is_empty() {
            "/".to_string()
        } else {
            stage.defaults.workdir.clone()
        };
        let user = stage.defaults.user.clone();
        stage.extend_chain(&format!(
            "RUN {}",
            json!({"args": args, "env": env, "cwd": cwd, "user": user})
        ));
        let line = step.line;
        let file = self.file.clone();
        self.layer_step(stage, step, |b, stage| {
            let view = stage.view();
            let (uid, gid) = if user.is_empty() {
                (0, 0)
            } else {
                view::resolve_user(&view, &user).map_err(|m| b.err(step, m))?
            };
            let tug = b.tug.clone().ok_or_else(|| {
                b.err(
                    step,
                    "cannot find the `tug` runtime (set TUG_RUNTIME or put tug on PATH)",
                )
            })?;
            let scratch = b.dirs.scratch_dir("run")?;
            // Unique on the host while it runs: the container's cgroup is named by it.
            static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = format!("tug-build-{}-{n}", std::process::id());
            let lower: Vec<PathBuf> = stage.layers.iter().map(|l| l.dir.clone()).collect();
            let req = RunRequest {
                id,
                lower: &lower,
                args: args.clone(),
                env,
                cwd,
                uid,
                gid,
                scratch: &scratch.0,
                tug: &tug,
            };
            let code = run::run(&req)?;
            if code != 0 {
                return Err(BuildError::RunFailed {
                    file,
                    line,
                    command: serde_json::to_string(&args).expect("json"),
                    code,
                });
            }
            let upper = scratch.0.join("upper");
            // Mount points the runtime made that the image did not have stay out.
            let skip = |rel: &Path, meta: &fs::Metadata| {
                let top = rel.components().count() == 1;
                top && meta.is_dir()
                    && ["proc", "sys", "dev"].iter().any(|m| rel == Path::new(m))
                    && view.lookup(rel).is_none()
                    && fs::read_dir(upper.join(rel)).is_ok_and(|mut d| d.next().is_none())
            };
            b.dirs.write_layer(|tar| add_upper_tree(tar, &upper, &skip))
        })
    }

    fn copy_step(
        &mut self,
        stage: &mut Stage,
        step: &Step,
        spec: &crate::dockerfile::CopySpec,
        stages: &[Option<Stage>],
        names: &[Option<String>],
    ) -> Result<(), BuildError> {
        let vars = stage.vars();
        let paths: Vec<String> = spec
            .paths
            .iter()
            .map(|p| {
                if spec.json {
                    words::expand_plain(p, &vars)
                } else {
                    words::expand(p, &vars)
                }
            })
            .collect::<Result<_, _>>()
            .map_err(|m| self.err(step, m))?;
        let (dest, sources) = paths.split_last().expect("parser checked");
        let image = stage.view();
        let chown = match &spec.chown {
            None => None,
            Some(c) => {
                let c = words::expand(c, &vars).map_err(|m| self.err(step, m))?;
                Some(
                    view::resolve_user(&image, &c)
                        .map_err(|m| self.err(step, format!("bad --chown {c:?}: {m}")))?,
                )
            }
        };
        let chmod = match &spec.chmod {
            None => None,
            Some(m) => Some(
                copy::parse_chmod(m)
                    .ok_or_else(|| self.err(step, format!("bad --chmod {m:?}: expected octal")))?,
            ),
        };
        let source = match &spec.from {
            None => copy::Source::Context(self.context),
            Some(from) => {
                let from = words::expand(from, &vars).map_err(|m| self.err(step, m))?;
                let lower = from.to_ascii_lowercase();
                let idx = names
                    .iter()
                    .position(|n| n.as_deref() == Some(lower.as_str()))
                    .or_else(|| lower.parse::<usize>().ok().filter(|i| *i < stages.len()));
                match idx {
                    Some(i) => {
                        let s = stages[i].as_ref().ok_or_else(|| {
                            self.err(step, format!("--from={from}: that stage is not built yet"))
                        })?;
                        stage.extend_chain(&format!("FROM-STAGE {}", s.chain));
                        copy::Source::View(s.view(), format!("stage {from:?}"))
                    }
                    None => {
                        let (details, layers, _) = self.store_image(&from).map_err(|e| {
                            self.err(step, format!("--from={from}: no such stage or image ({e})"))
                        })?;
                        stage.extend_chain(&format!("FROM-IMAGE {}", details.digest));
                        copy::Source::View(
                            View::new(layers.into_iter().map(|l| l.dir).collect()),
                            format!("image {from:?}"),
                        )
                    }
                }
            }
        };
        let plan = copy::plan(
            &step.keyword,
            spec.add,
            &source,
            sources,
            dest,
            &stage.defaults.workdir,
            &image,
            chown,
            chmod,
        )
        .map_err(|m| BuildError::Step {
            file: self.file.clone(),
            line: step.line,
            message: m,
        })?;
        stage.extend_chain(&format!("{} {}", step.keyword, plan.digest));
        self.layer_step(stage, step, |b, _| copy::write(&plan, &image, b.dirs))
    }
}
