//! The build context: a directory, minus what `.dockerignore` excludes.
//!
//! `.dockerignore` as Docker reads it: one pattern a line, `#` comments, `!` re-includes,
//! `*` and `?` within one path component, `**` across any number of them, a leading `/` or
//! `./` ignored. A pattern that matches a directory excludes everything below it; the last
//! pattern that matches a path decides.

use std::fs;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone)]
struct Pattern {
    exclude: bool,
    segments: Vec<String>,
}

/// A context directory with its ignore rules.
#[derive(Debug, Clone)]
pub struct Context {
    pub root: PathBuf,
    patterns: Vec<Pattern>,
}

impl Context {
    /// Open `root`, reading its `.dockerignore` if there is one.
    pub fn open(root: &Path) -> std::io::Result<Context> {
        let root = fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let text = match fs::read_to_string(root.join(".dockerignore")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(Context {
            root,
            patterns: parse_ignore(&text),
        })
    }

    /// Whether the context path `rel` (relative, `/`-separated) is excluded.
    pub fn is_excluded(&self, rel: &Path) -> bool {
        let segs: Vec<String> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if segs.is_empty() {
            return false;
        }
        let mut excluded = false;
        for p in &self.patterns {
            // The pattern matches the path or one of its parent directories.
            let hit = (1..=segs.len()).any(|n| match_segments(&p.segments, &segs[..n]));
            if hit {
                excluded = p.exclude;
            }
        }
        excluded
    }

    /// Every path in the context (relative, sorted, parents first) that is not excluded.
    /// A directory that is excluded is still walked: a `!` rule may bring back something in it.
    pub fn walk(&self, rel: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        self.walk_into(rel, &mut out)?;
        Ok(out)
    }

    fn walk_into(&self, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let dir = self.root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let child = rel.join(&name);
            let meta = fs::symlink_metadata(self.root.join(&child))?;
            if !self.is_excluded(&child) {
                out.push(child.clone());
            }
            if meta.is_dir() {
                self.walk_into(&child, out)?;
            }
        }
        Ok(())
    }
}

fn parse_ignore(text: &str) -> Vec<Pattern> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (exclude, pat) = match line.strip_prefix('!') {
            Some(p) => (false, p.trim()),
            None => (true, line),
        };
        let segments: Vec<String> = pat
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .map(str::to_string)
            .collect();
        if segments.is_empty() {
            continue;
        }
        out.push(Pattern { exclude, segments });
    }
    out
}

/// Match path segments against pattern segments, `**` standing for any number of them.
pub fn match_segments(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((p, prest)) => glob(first, p) && match_segments(rest, prest),
            None => false,
        },
    }
}

/// `*`, `?` and `[...]` within one name.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|k| glob_at(&p[1..], &n[k..])),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        Some('[') => {
            let Some(close) = p.iter().position(|&c| c == ']') else {
                return n.first() == Some(&'[') && glob_at(&p[1..], &n[1..]);
            };
            let Some(&c) = n.first() else { return false };
            let class = &p[1..close];
            let (negate, class) = match class.first() {
                Some('^') | Some('!') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_at(&p[close + 1..], &n[1..])
        }
        Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && glob_at(&p[2..], &n[1..]),
        Some(&c) => n.first() == Some(&c) && glob_at(&p[1..], &n[1..]),
    }
}

/// Whether a source path has wildcards.
pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(rules: &str) -> Context {
        Context {
            root: PathBuf::from("/"),
            patterns: parse_ignore(rules),
        }
    }

    #[test]
    fn ignore_rules() {
        let c = ctx("# comment\n*.log\n/secret\nbuild/**/tmp\n!keep.log\nnode_modules\n");
        assert!(c.is_excluded(Path::new("a.log")));
        assert!(!c.is_excluded(Path::new("keep.log")));
        assert!(!c.is_excluded(Path::new("sub/a.log")), "* does not cross /");
        assert!(c.is_excluded(Path::new("secret")));
        assert!(c.is_excluded(Path::new("secret/inner/file")));
        assert!(c.is_excluded(Path::new("build/x/y/tmp/z")));
        assert!(c.is_excluded(Path::new("build/tmp")));
        assert!(c.is_excluded(Path::new("node_modules/a/b.js")));
        assert!(!c.is_excluded(Path::new("src/main.rs")));
        let any = ctx("**/*.o\n");
        assert!(any.is_excluded(Path::new("a/b/c.o")));
        assert!(any.is_excluded(Path::new("c.o")));
    }

    #[test]
    fn globs() {
        assert!(glob("*.txt", "a.txt"));
        assert!(!glob("*.txt", "a.txt.bak"));
        assert!(glob("fil?[0-9]", "file7"));
        assert!(!glob("fil?[!0-9]", "file7"));
    }
}
