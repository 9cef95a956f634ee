//! tug-build: OCI images from a Dockerfile or Containerfile, without Docker.
//!
//! [`build`] parses the file ([`dockerfile`]), builds the stages the target needs, each
//! instruction in order ([`builder`], the image config in [`config`]): RUN in a `tug` container on an overlay of the layers
//! so far ([`run`]), COPY/ADD as layers written from the context or another stage
//! ([`copy`]), the rest as changes of the image config. Layers are cached by the chain of
//! instructions and the content they read ([`layer`]). The result is imported into the
//! tug-image store under its tags, and written as an OCI layout or archive on request
//! ([`output`]). See docs/build.md.

pub mod builder;
pub mod config;
pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod error;
pub mod layer;
pub mod output;
pub mod run;
pub mod view;
pub mod words;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub use error::BuildError;

use builder::{Builder, Stage};
use dockerfile::{Instruction, Step};

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile (default: `Dockerfile`, else `Containerfile`, in the context). A
    /// relative path is taken from the current directory, then from the context.
    pub dockerfile: Option<PathBuf>,
    /// References to give the image (none: it is stored by digest).
    pub tags: Vec<String>,
    /// `--build-arg NAME=VALUE`.
    pub build_args: BTreeMap<String, String>,
    /// The stage to build (default: the last).
    pub target: Option<String>,
    /// Also write the image as an OCI layout dir, or an oci-archive if it ends in `.tar`.
    pub output: Option<PathBuf>,
    /// The node's data directory: the image store is `<data_dir>/images`, the build cache
    /// `<data_dir>/build`.
    pub data_dir: PathBuf,
    /// The `tug` binary for RUN (default: [`run::find_tug`]).
    pub tug: Option<PathBuf>,
    /// No progress on stderr.
    pub quiet: bool,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The manifest digest.
    pub digest: String,
    /// The references the store now has for it.
    pub references: Vec<String>,
    pub layers_built: usize,
    pub cache_hits: usize,
    pub warnings: Vec<String>,
}

/// Build an image.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let context =
        context::Context::open(&opts.context).map_err(|e| BuildError::io(&opts.context, e))?;
    let (path, label) = dockerfile_path(opts, &context.root)?;
    let text = std::fs::read_to_string(&path).map_err(|e| BuildError::io(&path, e))?;
    let steps = dockerfile::parse(&text).map_err(|e| BuildError::Step {
        file: label.clone(),
        line: e.line,
        message: e.message,
    })?;

    // ARGs before the first FROM are the FROM lines' variables.
    let mut meta_args = words::Vars::new();
    let mut used = HashSet::new();
    let first_from = steps
        .iter()
        .position(|s| matches!(s.instruction, Instruction::From { .. }))
        .expect("parser checked");
    for s in &steps[..first_from] {
        if let Instruction::Arg(t) = &s.instruction {
            for w in words::split(t, &meta_args).map_err(|m| BuildError::Step {
                file: label.clone(),
                line: s.line,
                message: format!("ARG: {m}"),
            })? {
                let (name, default) = match w.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (w.clone(), None),
                };
                if let Some(v) = opts.build_args.get(&name) {
                    used.insert(name.clone());
                    meta_args.insert(name, v.clone());
                } else if let Some(d) = default {
                    meta_args.insert(name, d);
                }
            }
        }
    }

    // Stages: a FROM and the steps up to the next.
    let mut stages: Vec<(Step, Vec<Step>)> = Vec::new();
    for s in &steps[first_from..] {
        if let Instruction::From { .. } = s.instruction {
            stages.push((s.clone(), Vec::new()));
        } else {
            stages.last_mut().expect("FROM first").1.push(s.clone());
        }
    }
    let names: Vec<Option<String>> = stages
        .iter()
        .map(|(f, _)| match &f.instruction {
            Instruction::From { alias, .. } => alias.clone(),
            _ => None,
        })
        .collect();
    let target = match &opts.target {
        None => stages.len() - 1,
        Some(t) => names
            .iter()
            .position(|n| n.as_deref() == Some(t.to_ascii_lowercase().as_str()))
            .ok_or_else(|| {
                BuildError::Other(format!("--target {t}: {label} has no stage named {t:?}"))
            })?,
    };
    let needed = needed_stages(&stages, &names, target);

    let store = tug_image::ImageStore::open(&opts.data_dir)?;
    let dirs = layer::BuildDirs::open(store_data_dir(&opts.data_dir)?.as_path())?;
    let mut b = Builder {
        file: label,
        dirs: &dirs,
        store: &store,
        context: &context,
        build_args: &opts.build_args,
        meta_args,
        used_args: used,
        tug: opts.tug.clone().or_else(run::find_tug),
        quiet: opts.quiet,
        layers_built: 0,
        cache_hits: 0,
        step_no: 0,
    };
    let total: usize = (0..=target)
        .filter(|i| needed[*i])
        .map(|i| stages[i].1.len() + 1)
        .sum();
    let mut built: Vec<Option<Stage>> = Vec::new();
    for (i, (from, body)) in stages.iter().enumerate().take(target + 1) {
        if !needed[i] {
            built.push(None);
            continue;
        }
        b.step_no += 1;
        if !b.quiet {
            eprintln!("STEP {}/{total}: FROM {}", b.step_no, from.text);
        }
        let Instruction::From { image, alias } = &from.instruction else {
            unreachable!("stages start with FROM")
        };
        let mut stage = b.from(from, image, alias.clone(), &built, &names)?;
        for step in body {
            b.step_no += 1;
            if !b.quiet {
                eprintln!("STEP {}/{total}: {} {}", b.step_no, step.keyword, step.text);
            }
            b.step(&mut stage, step, &built, &names)?;
        }
        built.push(Some(stage));
    }
    let stage = built[target].as_ref().expect("target built");
    let docs = output::documents(stage, &dirs)?;
    let references = output::to_store(stage, &docs, &dirs, &store, &opts.tags)?;
    if let Some(out) = &opts.output {
        output::to_oci(
            stage,
            &docs,
            &dirs,
            &store,
            opts.tags.first().map(String::as_str),
            out,
        )?;
    }
    let warnings = opts
        .build_args
        .keys()
        .filter(|k| !b.used_args.contains(*k))
        .map(|k| format!("build argument {k:?} was not consumed by any ARG"))
        .collect();
    Ok(BuildReport {
        digest: docs.manifest.to_string(),
        references,
        layers_built: b.layers_built,
        cache_hits: b.cache_hits,
        warnings,
    })
}

/// The data dir as the store sees it (absolute, no symlinks), so paths agree.
fn store_data_dir(data_dir: &Path) -> Result<PathBuf, BuildError> {
    std::fs::canonicalize(data_dir).map_err(|e| BuildError::io(data_dir, e))
}

fn dockerfile_path(opts: &BuildOptions, root: &Path) -> Result<(PathBuf, String), BuildError> {
    match &opts.dockerfile {
        Some(f) => {
            let p = if f.exists() { f.clone() } else { root.join(f) };
            Ok((p, f.display().to_string()))
        }
        None => ["Dockerfile", "Containerfile"]
            .iter()
            .map(|n| (root.join(n), n.to_string()))
            .find(|(p, _)| p.is_file())
            .ok_or_else(|| {
                BuildError::Other(format!(
                    "{}: no Dockerfile or Containerfile (use -f)",
                    root.display()
                ))
            }),
    }
}

/// The stages `target` needs: itself, the stages it is built FROM and copies `--from`.
fn needed_stages(
    stages: &[(Step, Vec<Step>)],
    names: &[Option<String>],
    target: usize,
) -> Vec<bool> {
    let find = |r: &str, before: usize| -> Option<usize> {
        let r = r.to_ascii_lowercase();
        names[..before]
            .iter()
            .position(|n| n.as_deref() == Some(r.as_str()))
            .or_else(|| r.parse::<usize>().ok().filter(|i| *i < before))
    };
    let mut needed = vec![false; stages.len()];
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if needed[i] {
            continue;
        }
        needed[i] = true;
        if let Instruction::From { image, .. } = &stages[i].0.instruction {
            if let Some(j) = names[..i]
                .iter()
                .position(|n| n.as_deref() == Some(image.to_ascii_lowercase().as_str()))
            {
                todo.push(j);
            }
        }
        for s in &stages[i].1 {
            if let Instruction::Copy(c) = &s.instruction {
                if let Some(j) = c.from.as_deref().and_then(|f| find(f, i)) {
                    todo.push(j);
                }
            }
        }
    }
    needed
}
