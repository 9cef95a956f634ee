//! `tugboat diff` and `apply --dry-run`: what applying a spec file would change, computed on
//! the client from the file and the server's services (nothing is sent but two reads).

use crate::model::Service;
use crate::spec::{ServiceSpec, SpecFile};
use std::collections::BTreeMap;

/// What apply would do to one service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        })
    }
}

/// Per service in the file: what apply would do, and a unified diff of its spec (empty when
/// unchanged). Services on the server that the file does not name are left alone by apply
/// and are not listed.
pub fn plan(server: &[Service], file: &SpecFile) -> BTreeMap<String, (Change, String)> {
    let current: BTreeMap<&str, &ServiceSpec> =
        server.iter().map(|s| (s.name.as_str(), &s.spec)).collect();
    file.services
        .iter()
        .map(|(name, spec)| {
            // `build:` stays with the command line; the server never has it.
            let spec = &ServiceSpec {
                build: None,
                ..spec.clone()
            };
            let new = spec_text(spec);
            let (change, old) = match current.get(name.as_str()) {
                None => (Change::Created, String::new()),
                Some(old) if *old == spec => (Change::Unchanged, String::new()),
                Some(old) => (Change::Updated, spec_text(old)),
            };
            let text = if change == Change::Unchanged {
                String::new()
            } else {
                unified(
                    &old,
                    &new,
                    &format!("service/{name} (server)"),
                    &format!("service/{name} (file)"),
                )
            };
            (name.clone(), (change, text))
        })
        .collect()
}

fn spec_text(spec: &ServiceSpec) -> String {
    serde_yaml_ng::to_string(spec).unwrap_or_else(|e| format!("cannot render: {e}\n"))
}

/// Lines of context around each change.
const CONTEXT: usize = 3;

enum Line<'a> {
    Same(&'a str),
    Gone(&'a str),
    Added(&'a str),
}

/// A unified diff of two texts (`---`/`+++` headers, `@@` hunks with 3 lines of context).
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence, from the end: spec texts are a few dozen lines.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut lines = vec![];
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // What goes, before what comes in its place.
            lines.push(Line::Gone(a[i]));
            i += 1;
        } else {
            lines.push(Line::Added(b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !matches!(l, Line::Same(_)))
        .map(|(n, _)| n)
        .collect();
    if changed.is_empty() {
        return String::new();
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    // Group changes whose contexts touch into hunks.
    let mut hunks: Vec<(usize, usize)> = vec![];
    for &n in &changed {
        let start = n.saturating_sub(CONTEXT);
        let end = (n + CONTEXT + 1).min(lines.len());
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    for (start, end) in hunks {
        // Line numbers of the hunk's start in each text (1-based).
        let (mut old_at, mut new_at) = (1, 1);
        for line in &lines[..start] {
            match line {
                Line::Same(_) => {
                    old_at += 1;
                    new_at += 1;
                }
                Line::Gone(_) => old_at += 1,
                Line::Added(_) => new_at += 1,
            }
        }
        let part = &lines[start..end];
        let old_len = part.iter().filter(|l| !matches!(l, Line::Added(_))).count();
        let new_len = part.iter().filter(|l| !matches!(l, Line::Gone(_))).count();
        if old_len == 0 {
            old_at -= 1;
        }
        if new_len == 0 {
            new_at -= 1;
        }
        out += &format!("@@ -{old_at},{old_len} +{new_at},{new_len} @@\n");
        for line in part {
            out += &match line {
                Line::Same(t) => format!(" {t}\n"),
                Line::Gone(t) => format!("-{t}\n"),
                Line::Added(t) => format!("+{t}\n"),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_is_shown_with_its_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified(old, new, "old", "new"),
            "--- old\n+++ new\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        assert_eq!(unified(old, old, "old", "new"), "");
        assert_eq!(
            unified("", "x\n", "old", "new"),
            "--- old\n+++ new\n@@ -0,0 +1,1 @@\n+x\n"
        );
    }

    #[test]
    fn plan_says_what_apply_would_do() {
        let mut web = Service::new("web", ServiceSpec::new("web:1"), 0);
        web.spec.replicas = 2;
        let file: SpecFile = serde_yaml_ng::from_str(
            "services:\n  web:\n    image: web:2\n    replicas: 2\n  db:\n    image: pg\n",
        )
        .unwrap();
        let plan = plan(&[web.clone()], &file);
        assert_eq!(plan["db"].0, Change::Created);
        assert_eq!(plan["web"].0, Change::Updated);
        assert!(
            plan["web"].1.contains("-image: web:1\n+image: web:2\n"),
            "{}",
            plan["web"].1
        );
        let same: SpecFile =
            serde_yaml_ng::from_str("services:\n  web:\n    image: web:1\n    replicas: 2\n")
                .unwrap();
        assert_eq!(
            plan_of(&[web], &same),
            vec![("web".into(), Change::Unchanged)]
        );
    }

    fn plan_of(server: &[Service], file: &SpecFile) -> Vec<(String, Change)> {
        plan(server, file)
            .into_iter()
            .map(|(name, (change, _))| (name, change))
            .collect()
    }
}
