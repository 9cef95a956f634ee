//! COPY and ADD: what a step copies (from the context, or from a stage or image with
//! `--from`), the digest of that content (the step's cache key), and the layer made of it.
//!
//! The layer is written straight as a tar stream from the sources: no container and no
//! mount. The destination is resolved inside the image (a `/bin -> usr/bin` link is
//! followed as in a chroot), and its parent directories that the image already has keep
//! their owner and mode in the layer, as they must: the layer's entry is what overlay shows.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use tug_image::digest::{Algorithm, Hasher};
use tug_image::Digest;

use crate::context::{glob, has_wildcard, Context};
use crate::layer::{add_dir, add_object, hash_file, BuildDirs, EntryMeta, LayerRef, LayerTar};
use crate::view::View;

/// Where a COPY reads from.
pub enum Source<'a> {
    Context(&'a Context),
    /// An earlier stage or an image, and how errors name it.
    View(View, String),
}

/// One object to put in the layer.
#[derive(Debug, Clone)]
enum Item {
    /// A file, directory or symlink at `real` (not followed).
    Object { real: PathBuf, meta: fs::Metadata },
    /// A local tar archive to extract here (ADD).
    Archive { real: PathBuf },
}

/// A COPY resolved: its items by destination (relative to the image's root).
pub struct Plan {
    items: BTreeMap<PathBuf, Item>,
    /// Destination directories a COPY of a directory or of several sources creates.
    dest_dirs: Vec<PathBuf>,
    chown: Option<(u32, u32)>,
    chmod: Option<u32>,
    /// The content digest: paths, types, modes, link targets and file bytes.
    pub digest: Digest,
}

/// Clean a source path: relative, no `..` above its root. `None` if it leaves the root.
fn clean_source(s: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(s).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

/// `dest` (absolute in the image, or relative to `workdir`) as a clean relative path.
pub fn image_path(workdir: &str, dest: &str) -> PathBuf {
    let joined = if dest.starts_with('/') {
        PathBuf::from(dest)
    } else {
        Path::new(if workdir.is_empty() { "/" } else { workdir }).join(dest)
    };
    clean_source(&joined.to_string_lossy()).unwrap_or_default()
}

impl Source<'_> {
    fn describe(&self) -> String {
        match self {
            Source::Context(_) => "in context".into(),
            Source::View(_, name) => format!("in {name}"),
        }
    }

    /// Children names of `rel` (for wildcards).
    fn children(&self, rel: &Path) -> Vec<String> {
        match self {
            Source::Context(ctx) => fs::read_dir(ctx.root.join(rel))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| !ctx.is_excluded(&rel.join(n)))
                        .collect()
                })
                .unwrap_or_default(),
            Source::View(v, _) => v
                .read_dir(&v.resolve(rel, true))
                .into_keys()
                .map(|n| n.to_string_lossy().into_owned())
                .collect(),
        }
    }

    /// The object at `rel` (the top-level symlink followed, as Docker does).
    fn object(&self, rel: &Path) -> Option<(PathBuf, fs::Metadata)> {
        match self {
            Source::Context(ctx) => {
                if ctx.is_excluded(rel) {
                    return None;
                }
                let real = ctx.root.join(rel);
                // A link inside the context is followed only if it stays inside.
                let meta = match fs::metadata(&real) {
                    Ok(m) => m,
                    Err(_) => fs::symlink_metadata(&real).ok()?,
                };
                let canon = fs::canonicalize(&real).ok();
                if canon.as_ref().is_some_and(|c| !c.starts_with(&ctx.root)) {
                    return Some((real.clone(), fs::symlink_metadata(&real).ok()?));
                }
                Some((canon.unwrap_or(real), meta))
            }
            Source::View(v, _) => {
                let f = v.lookup(&v.resolve(rel, true))?;
                Some((f.real, f.meta))
            }
        }
    }

    /// Every object below directory `rel`, as (path relative to `rel`, real, meta).
    fn descendants(&self, rel: &Path) -> Vec<(PathBuf, PathBuf, fs::Metadata)> {
        let mut out = Vec::new();
        match self {
            Source::Context(ctx) => {
                for p in ctx.walk(rel).unwrap_or_default() {
                    let real = ctx.root.join(&p);
                    if let Ok(meta) = fs::symlink_metadata(&real) {
                        let sub = p.strip_prefix(rel).unwrap_or(&p).to_path_buf();
                        out.push((sub, real, meta));
                    }
                }
            }
            Source::View(v, _) => {
                let base = v.resolve(rel, true);
                let mut stack = vec![PathBuf::new()];
                while let Some(sub) = stack.pop() {
                    for (name, f) in v.read_dir(&base.join(&sub)) {
                        let child = sub.join(&name);
                        if f.meta.is_dir() {
                            stack.push(child.clone());
                        }
                        out.push((child, f.real, f.meta));
                    }
                }
            }
        }
        out
    }
}

/// Expand a source pattern component by component.
fn expand_pattern(source: &Source<'_>, rel: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for c in rel.components() {
        let name = c.as_os_str().to_string_lossy().into_owned();
        let mut next = Vec::new();
        for base in &found {
            if has_wildcard(&name) {
                let mut names = source.children(base);
                names.sort();
                for n in names.into_iter().filter(|n| glob(&name, n)) {
                    next.push(base.join(n));
                }
            } else {
                next.push(base.join(&name));
            }
        }
        found = next;
    }
    found
}

/// Whether a local file is a tar archive (plain, gzip or zstd) that ADD extracts.
fn is_archive(path: &Path) -> bool {
    let Ok(f) = fs::File::open(path) else {
        return false;
    };
    let Ok(mut r) = tug_image::unpack::decompress(f) else {
        return false;
    };
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n == 512 && &head[257..262] == b"ustar"
}

/// Resolve a COPY/ADD: `sources` and `dest` are expanded strings.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    keyword: &str,
    add: bool,
    source: &Source<'_>,
    sources: &[String],
    dest: &str,
    workdir: &str,
    image: &View,
    chown: Option<(u32, u32)>,
    chmod: Option<u32>,
) -> Result<Plan, String> {
    let dest_rel = image_path(workdir, dest);
    let wildcard = sources.iter().any(|s| has_wildcard(s));
    let dest_exists_dir = image
        .lookup(&image.resolve(&dest_rel, true))
        .is_some_and(|f| f.meta.is_dir());
    let dest_is_dir = dest.ends_with('/') || sources.len() > 1 || wildcard || dest_exists_dir;
    if (sources.len() > 1 || wildcard) && !dest.ends_with('/') && !dest_exists_dir {
        return Err(format!(
            "{keyword}: with several sources the destination must be a directory ending in /: {dest:?}"
        ));
    }
    // Where things really go: symlinks in the destination followed inside the image.
    let dest_dir_real = if dest_is_dir {
        image.resolve(&dest_rel, true)
    } else {
        let parent = dest_rel.parent().unwrap_or(Path::new(""));
        image
            .resolve(parent, true)
            .join(dest_rel.file_name().unwrap_or_default())
    };
    let mut items = BTreeMap::new();
    let mut dest_dirs = Vec::new();
    if dest_is_dir && !dest_dir_real.as_os_str().is_empty() {
        dest_dirs.push(dest_dir_real.clone());
    }
    for s in sources {
        if s.starts_with("http://") || s.starts_with("https://") || s.starts_with("git@") {
            return Err(format!(
                "{keyword}: remote source {s:?}: tugboat build copies only local files (download it into the context first)"
            ));
        }
        let rel = clean_source(s).ok_or_else(|| {
            format!(
                "{keyword}: source {s:?} is outside the {}",
                match source {
                    Source::Context(_) => "build context".to_string(),
                    Source::View(_, n) => n.clone(),
                }
            )
        })?;
        let matches: Vec<(PathBuf, PathBuf, fs::Metadata)> = expand_pattern(source, &rel)
            .into_iter()
            .filter_map(|p| source.object(&p).map(|(real, meta)| (p, real, meta)))
            .collect();
        if matches.is_empty() {
            return Err(format!(
                "{keyword}: source {s:?} not found {}",
                source.describe()
            ));
        }
        for (p, real, meta) in matches {
            if meta.is_dir() {
                if !dest_is_dir && !dest_dir_real.as_os_str().is_empty() {
                    dest_dirs.push(dest_dir_real.clone());
                }
                let base = &dest_dir_real;
                for (sub, r, m) in source.descendants(&p) {
                    items.insert(base.join(sub), Item::Object { real: r, meta: m });
                }
            } else if add && matches!(source, Source::Context(_)) && is_archive(&real) {
                let at = dest_dir_real.clone();
                dest_dirs.push(at.clone());
                items.insert(
                    at.join(format!(".tug-archive-{}", items.len())),
                    Item::Archive { real },
                );
            } else {
                let target = if dest_is_dir {
                    dest_dir_real.join(p.file_name().unwrap_or_default())
                } else {
                    dest_dir_real.clone()
                };
                if target.as_os_str().is_empty() {
                    return Err(format!("{keyword}: cannot copy a file onto /"));
                }
                items.insert(target, Item::Object { real, meta });
            }
        }
    }
    // The content digest.
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(format!("{keyword} {chown:?} {chmod:?} {dest_dirs:?}\n").as_bytes());
    for (dest, item) in &items {
        h.update(dest.to_string_lossy().as_bytes());
        match item {
            Item::Object { real, meta } => {
                h.update(format!(" {:o} {}\n", meta.mode(), meta.len()).as_bytes());
                if meta.file_type().is_symlink() {
                    h.update(
                        fs::read_link(real)
                            .unwrap_or_default()
                            .as_os_str()
                            .as_encoded_bytes(),
                    );
                } else if meta.is_file() {
                    hash_file(real, &mut h).map_err(|e| e.to_string())?;
                }
            }
            Item::Archive { real } => {
                h.update(b" archive\n");
                hash_file(real, &mut h).map_err(|e| e.to_string())?;
            }
        }
        h.update(b"\n");
    }
    Ok(Plan {
        items,
        dest_dirs,
        chown,
        chmod,
        digest: h.finish(),
    })
}

/// Write the layer of a plan over `image`.
pub fn write(plan: &Plan, image: &View, dirs: &BuildDirs) -> Result<LayerRef, crate::BuildError> {
    dirs.write_layer(|tar| fill(tar, plan, image))
}

fn fill(tar: &mut LayerTar, plan: &Plan, image: &View) -> Result<(), crate::BuildError> {
    let owner = |m: EntryMeta| match plan.chown {
        Some((uid, gid)) => EntryMeta { uid, gid, ..m },
        None => EntryMeta {
            uid: 0,
            gid: 0,
            ..m
        },
    };
    let with_mode = |m: EntryMeta, is_link: bool| match plan.chmod {
        Some(mode) if !is_link => EntryMeta { mode, ..m },
        _ => m,
    };
    // Every directory the items need, with the metadata the image gives it or a new one.
    let mut dirs_needed: BTreeMap<PathBuf, EntryMeta> = BTreeMap::new();
    let now_dir = |under_dest: bool| {
        let m = EntryMeta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        if under_dest {
            owner(m)
        } else {
            m
        }
    };
    let need = |p: &Path, dirs_needed: &mut BTreeMap<PathBuf, EntryMeta>| {
        for a in p.ancestors().skip(1) {
            if a.as_os_str().is_empty() || dirs_needed.contains_key(a) {
                continue;
            }
            let under_dest = plan.dest_dirs.iter().any(|d| a.starts_with(d));
            let meta = match image.lookup(a) {
                Some(f) if f.meta.is_dir() => EntryMeta::of(&f.meta),
                _ => now_dir(under_dest),
            };
            dirs_needed.insert(a.to_path_buf(), meta);
        }
    };
    for d in &plan.dest_dirs {
        need(&d.join("x"), &mut dirs_needed);
    }
    for dest in plan.items.keys() {
        need(dest, &mut dirs_needed);
    }
    for (d, m) in &dirs_needed {
        if !plan.items.contains_key(d) {
            add_dir(tar, d, *m)?;
        }
    }
    for (dest, item) in &plan.items {
        match item {
            Item::Object { real, meta } => {
                let m = with_mode(owner(EntryMeta::of(meta)), meta.file_type().is_symlink());
                add_object(tar, real, dest, meta, m)?;
            }
            Item::Archive { real } => {
                let at = dest.parent().unwrap_or(Path::new(""));
                extract(tar, real, at)?;
            }
        }
    }
    Ok(())
}

/// ADD of a local archive: its entries, re-rooted under `at`.
fn extract(tar: &mut LayerTar, archive: &Path, at: &Path) -> Result<(), crate::BuildError> {
    use crate::error::IoContext;
    let f = fs::File::open(archive).at(archive)?;
    let plain = tug_image::unpack::decompress(f).at(archive)?;
    let mut a = tar::Archive::new(plain);
    for entry in a.entries().at(archive)? {
        let mut entry = entry.at(archive)?;
        let raw = entry.path_bytes().into_owned();
        let rel = tug_image::unpack::clean_entry_path(&raw).map_err(|r| {
            crate::BuildError::Other(format!(
                "{}: entry {:?}: {r}",
                archive.display(),
                String::from_utf8_lossy(&raw)
            ))
        })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dest = at.join(&rel);
        let mut h = entry.header().clone();
        let kind = h.entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .at(archive)?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let target = if kind.is_hard_link() {
                at.join(
                    tug_image::unpack::clean_entry_path(target.as_os_str().as_encoded_bytes())
                        .unwrap_or_default(),
                )
            } else {
                target
            };
            tar.append_link(&mut h, &dest, &target).at(&dest)?;
        } else if kind.is_file()
            || kind.is_dir()
            || kind == tar::EntryType::Char
            || kind == tar::EntryType::Block
            || kind == tar::EntryType::Fifo
        {
            let size = h.entry_size().at(archive)?;
            tar.append_data(&mut h, &dest, (&mut entry).take(size))
                .at(&dest)?;
        }
    }
    Ok(())
}

/// `--chmod=0755`.
pub fn parse_chmod(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}
