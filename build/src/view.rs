//! A read-only view of an image's filesystem from its unpacked layer directories, without
//! mounting them: what overlayfs would show. Whiteouts are 0:0 character devices and an
//! opaque directory carries `trusted.overlay.opaque=y` (the form the store unpacks layers
//! in). Used to read `/etc/passwd`, to find what a COPY destination already is, and to copy
//! out of an earlier stage (`COPY --from`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The layers, lowest first.
#[derive(Debug, Clone)]
pub struct View {
    pub layers: Vec<PathBuf>,
}

/// One path of the view: where it really is and its metadata (not followed).
#[derive(Debug, Clone)]
pub struct Found {
    pub real: PathBuf,
    pub meta: Metadata,
}

pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `dir` has the overlay opaque marker.
pub(crate) fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and buf is as large as passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// Normal components of a relative path.
fn parts(rel: &Path) -> Vec<OsString> {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            _ => None,
        })
        .collect()
}

impl View {
    pub fn new(layers: Vec<PathBuf>) -> View {
        View { layers }
    }

    /// Whether something in `layer` above `rel` hides the lower layers' `rel`: an ancestor
    /// that is a whiteout, not a directory, or opaque.
    fn hides(layer: &Path, rel: &[OsString]) -> bool {
        let mut p = layer.to_path_buf();
        for (i, c) in rel.iter().enumerate() {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if is_whiteout(&m) => return true,
                Ok(m) if !m.is_dir() => return i + 1 < rel.len(),
                Ok(_) => {
                    if i + 1 < rel.len() && is_opaque(&p) {
                        // Opaque directory: the rest of the path must be in this layer.
                        let mut rest = p.clone();
                        rest.extend(&rel[i + 1..]);
                        return fs::symlink_metadata(rest).is_err();
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// The path `rel` (no symlinks followed), if the view has it.
    pub fn lookup(&self, rel: &Path) -> Option<Found> {
        let rel = parts(rel);
        if rel.is_empty() {
            let real = self.layers.last()?.clone();
            let meta = fs::symlink_metadata(&real).ok()?;
            return Some(Found { real, meta });
        }
        for layer in self.layers.iter().rev() {
            let mut real = layer.clone();
            real.extend(&rel);
            if let Ok(meta) = fs::symlink_metadata(&real) {
                if is_whiteout(&meta) || Self::hides(layer, &rel[..rel.len() - 1]) {
                    return None;
                }
                return Some(Found { real, meta });
            }
            if Self::hides(layer, &rel) {
                return None;
            }
        }
        None
    }

    /// `rel` with every symlink in it followed inside the view (as in a chroot), the last
    /// component too when `follow_last`. The result is relative and clean.
    pub fn resolve(&self, rel: &Path, follow_last: bool) -> PathBuf {
        let mut todo: Vec<OsString> = parts(rel);
        todo.reverse();
        let mut done: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            let mut cand: PathBuf = done.iter().collect();
            cand.push(&c);
            let last = todo.is_empty();
            let link = if last && !follow_last {
                None
            } else {
                self.lookup(&cand)
                    .filter(|f| f.meta.file_type().is_symlink())
                    .and_then(|f| fs::read_link(&f.real).ok())
            };
            match link {
                Some(target) if hops < 40 => {
                    hops += 1;
                    if target.is_absolute() {
                        done.clear();
                    }
                    let mut t: Vec<OsString> = target
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(s) => Some(s.to_os_string()),
                            Component::ParentDir => Some(OsString::from("..")),
                            _ => None,
                        })
                        .collect();
                    t.reverse();
                    todo.extend(t);
                }
                _ => done.push(c),
            }
        }
        done.iter().collect()
    }

    /// The entries of directory `rel` (not followed), by name.
    pub fn read_dir(&self, rel: &Path) -> BTreeMap<OsString, Found> {
        let relp = parts(rel);
        let mut out = BTreeMap::new();
        let mut gone = std::collections::HashSet::new();
        for layer in self.layers.iter().rev() {
            let mut dir = layer.clone();
            dir.extend(&relp);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => break,
                Err(_) => {
                    if Self::hides(layer, &relp) {
                        break;
                    }
                    continue;
                }
            }
            if let Ok(rd) = fs::read_dir(&dir) {
                for ent in rd.flatten() {
                    let name = ent.file_name();
                    if out.contains_key(&name) || gone.contains(&name) {
                        continue;
                    }
                    let real = ent.path();
                    let Ok(meta) = fs::symlink_metadata(&real) else {
                        continue;
                    };
                    if is_whiteout(&meta) {
                        gone.insert(name);
                    } else {
                        out.insert(name, Found { real, meta });
                    }
                }
            }
            if is_opaque(&dir) {
                break;
            }
        }
        out
    }

    /// The content of a file (symlinks followed), if there is one.
    pub fn read(&self, rel: &Path) -> Option<Vec<u8>> {
        let f = self.lookup(&self.resolve(rel, true))?;
        if !f.meta.is_file() {
            return None;
        }
        fs::read(&f.real).ok()
    }
}

/// `user[:group]` to numeric ids, names looked up in the view's /etc/passwd and /etc/group.
/// A user with no group takes its primary group from /etc/passwd (0 when numeric and absent).
pub fn resolve_user(view: &View, spec: &str) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group == Some("") {
        return Err(format!("invalid user {spec:?}"));
    }
    let passwd = view
        .read(Path::new("etc/passwd"))
        .map(|d| String::from_utf8_lossy(&d).into_owned())
        .unwrap_or_default();
    let entry = |name: &str| -> Option<(u32, u32)> {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4 && f[0] == name {
                Some((f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (
            uid,
            passwd
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 4 && f[2].parse() == Ok(uid)).then(|| f[3].parse().ok())?
                })
                .unwrap_or(0),
        ),
        Err(_) => {
            entry(user).ok_or_else(|| format!("unknown user {user:?} (not in /etc/passwd)"))?
        }
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = view
                    .read(Path::new("etc/group"))
                    .map(|d| String::from_utf8_lossy(&d).into_owned())
                    .unwrap_or_default();
                groups
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok())?
                    })
                    .ok_or_else(|| format!("unknown group {g:?} (not in /etc/group)"))?
            }
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_shadow_and_links_resolve_inside() {
        let d = tempfile::tempdir().unwrap();
        let low = d.path().join("low");
        let top = d.path().join("top");
        fs::create_dir_all(low.join("usr/bin")).unwrap();
        fs::create_dir_all(low.join("etc")).unwrap();
        fs::write(low.join("usr/bin/a"), "low").unwrap();
        fs::write(
            low.join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nwww:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(low.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        std::os::unix::fs::symlink("/usr/bin", low.join("bin")).unwrap();
        fs::create_dir_all(top.join("usr/bin")).unwrap();
        fs::write(top.join("usr/bin/b"), "top").unwrap();
        let v = View::new(vec![low.clone(), top.clone()]);
        assert_eq!(
            v.resolve(Path::new("bin/a"), true),
            PathBuf::from("usr/bin/a")
        );
        assert_eq!(v.resolve(Path::new("bin"), false), PathBuf::from("bin"));
        assert_eq!(v.read(Path::new("bin/a")).unwrap(), b"low");
        let names: Vec<_> = v.read_dir(Path::new("usr/bin")).into_keys().collect();
        assert_eq!(names, vec![OsString::from("a"), OsString::from("b")]);
        assert!(v.lookup(Path::new("nothere")).is_none());
        assert_eq!(resolve_user(&v, "www").unwrap(), (33, 34));
        assert_eq!(resolve_user(&v, "www:staff").unwrap(), (33, 50));
        assert_eq!(resolve_user(&v, "1000:7").unwrap(), (1000, 7));
        assert!(resolve_user(&v, "nobody").unwrap_err().contains("nobody"));
        assert!(resolve_user(&v, "www:nogroup").is_err());
    }
}
