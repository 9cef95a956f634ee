//! Find the line of a field path (`services.web.ports[1].published`) in a spec file's text.
//!
//! serde gives positions for syntax and type errors only; checks made after parsing know the
//! field path but not the line. This walks block-style YAML (and pretty JSON) by indentation,
//! which is how people write spec files. It answers `None` rather than guess wrong.

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = vec![];
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for index in rest.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The content of a line after any "- " item markers, and the column it starts at.
fn content(line: &str) -> (usize, &str) {
    let mut col = indent_of(line);
    let mut rest = line.trim_start();
    while let Some(r) = rest.strip_prefix("- ") {
        col += 2 + (r.len() - r.trim_start().len());
        rest = r.trim_start();
    }
    (col, rest)
}

fn starts_with_key(text: &str, key: &str) -> bool {
    [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
        format!("\"{key}\" :"),
    ]
    .iter()
    .any(|p| text.starts_with(p.as_str()))
}

/// 1-based line of the deepest part of `path` found in `text`.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    locate(text, path).map(|(n, _)| n + 1)
}

/// The 1-based lines where `key` is written directly under `parent` (the root when empty),
/// in file order: more than one is a duplicate key.
pub fn lines_of_key(text: &str, parent: &str, key: &str) -> Vec<usize> {
    let (start, min_indent) = if parent.is_empty() {
        (0, 0)
    } else {
        match locate(text, parent) {
            Some((n, indent)) => (n + 1, indent),
            None => return vec![],
        }
    };
    let mut column = None;
    let mut found = vec![];
    for (n, line) in text.lines().enumerate().skip(start) {
        if is_blank(line) {
            continue;
        }
        let (col, rest) = content(line);
        if col < min_indent {
            break;
        }
        if starts_with_key(rest, key) && *column.get_or_insert(col) == col {
            found.push(n + 1);
        }
    }
    found
}

/// The 0-based line of the deepest part of `path` found, and the indentation its children
/// have at least.
fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Option<usize> = None;
    let mut start = 0usize;
    let mut min_indent = 0usize;
    for segment in segments(path) {
        let mut hit = None;
        match segment {
            Segment::Key(key) => {
                for (n, line) in lines.iter().enumerate().skip(start) {
                    if is_blank(line) {
                        continue;
                    }
                    let (col, rest) = content(line);
                    if Some(n) != found && col < min_indent {
                        break;
                    }
                    if col >= min_indent && starts_with_key(rest, key) {
                        hit = Some((n, col + 1));
                        break;
                    }
                }
            }
            Segment::Index(index) => {
                let mut seen = 0usize;
                let mut dash_indent = None;
                for (n, line) in lines.iter().enumerate().skip(start + 1) {
                    if is_blank(line) {
                        continue;
                    }
                    let indent = indent_of(line);
                    if indent < min_indent.saturating_sub(1) {
                        break;
                    }
                    if line.trim_start().starts_with("- ") || line.trim_start() == "-" {
                        let expected = *dash_indent.get_or_insert(indent);
                        if indent == expected {
                            if seen == index {
                                hit = Some((n, indent + 1));
                                break;
                            }
                            seen += 1;
                        }
                    }
                }
            }
        }
        match hit {
            Some((line, next_indent)) => {
                found = Some(line);
                start = line;
                min_indent = next_indent;
            }
            None => break,
        }
    }
    found.map(|n| (n, min_indent))
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const YAML: &str = "services:\n  web:\n    image: nginx\n    ports:\n      - container: 80\n        published: 8080\n      - container: 81\n        published: 8080\n  db:\n    image: postgres\n    replicas: 2\n";

    #[test]
    fn finds_nested_keys_and_items() {
        assert_eq!(line_of(YAML, "services.web.image"), Some(3));
        assert_eq!(line_of(YAML, "services.web.ports[1].published"), Some(8));
        assert_eq!(line_of(YAML, "services.web.ports[0]"), Some(5));
        assert_eq!(line_of(YAML, "services.db.replicas"), Some(11));
        assert_eq!(line_of(YAML, "services.db"), Some(9));
    }

    #[test]
    fn missing_field_gives_the_deepest_parent() {
        assert_eq!(line_of(YAML, "services.db.resources.requests"), Some(9));
        assert_eq!(line_of(YAML, "nothing"), None);
    }

    #[test]
    fn works_for_pretty_json() {
        let json = "{\n  \"services\": {\n    \"web\": {\n      \"image\": \"\",\n      \"replicas\": 1\n    }\n  }\n}\n";
        assert_eq!(line_of(json, "services.web.replicas"), Some(5));
    }
}
