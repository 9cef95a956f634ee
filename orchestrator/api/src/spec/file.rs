//! Read a spec file (YAML, or JSON) into a validated [`SpecFile`].

use super::locate::line_of;
use super::validate::validate_services;
use super::SpecFile;
use std::fmt;

/// One problem, located: `shop.yaml:12: services.web.replicas: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file, line)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.field.is_empty() && self.field != "." {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Everything wrong with a spec file; nothing from it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecFileError {
    pub problems: Vec<SpecProblem>,
}

impl fmt::Display for SpecFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.problems.iter().map(|p| p.to_string()).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// Strip the " at line N column M" that serde_yaml adds; the location is shown in front.
fn without_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// serde's and libyaml's words, in a spec writer's: `expected u32` is `expected a whole
/// number`, a tab or an unclosed bracket is named as such.
pub fn in_user_words(message: &str, text: &str, line: Option<usize>) -> String {
    let line_text = line.and_then(|n| text.lines().nth(n.saturating_sub(1)));
    if message.contains("found character that cannot start any token")
        && line_text.is_some_and(|l| l.contains('\t'))
    {
        return "a tab character: YAML indents with spaces only".into();
    }
    for (open, close, what) in [("[", "]", "list"), ("{", "}", "mapping")] {
        if message.contains(&format!("did not find expected ',' or '{close}'"))
            || (message.contains(&format!("while parsing a flow {}", flow_name(what)))
                && message.contains("did not find"))
        {
            let opened = text
                .lines()
                .take(line.unwrap_or(usize::MAX))
                .enumerate()
                .filter(|(_, l)| l.matches(open).count() > l.matches(close).count())
                .last()
                .map_or(String::new(), |(n, _)| {
                    format!(" (opened at line {})", n + 1)
                });
            return format!(
                "unclosed `{open}`{opened}: a {what} in brackets needs its closing `{close}`"
            );
        }
    }
    let mut out = message.to_string();
    for (from, to) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        (
            "expected a sequence",
            "expected a list (`- item` lines or `[a, b]`)",
        ),
        ("expected a map", "expected a mapping (`key: value` lines)"),
        ("invalid type: sequence", "got a list"),
        ("invalid type: map", "got a mapping"),
        ("invalid type: string", "got the text"),
        ("invalid type: floating point", "got the number"),
        ("invalid type: integer", "got the number"),
        ("invalid type: boolean", "got"),
        ("invalid type: unit value", "got nothing (an empty value)"),
        ("invalid value: integer", "got"),
    ] {
        out = out.replace(from, to);
    }
    if out.contains("untagged enum BuildSource") {
        return "expected a directory (`build: ./front`) or a mapping with `context` and optionally `dockerfile`, `args`, `target`".into();
    }
    // serde names the struct it expected (`expected struct ServiceSpec`).
    if let Some(i) = out.find("expected struct ") {
        out.truncate(i);
        out.push_str("expected a mapping (`key: value` lines)");
    }
    out
}

fn flow_name(what: &str) -> &'static str {
    if what == "list" {
        "sequence"
    } else {
        "mapping"
    }
}

/// Takes the value at `path` out of `value`, so the rest can be read past a problem.
/// False when there is nothing left to take (the path is the root, or is not there).
fn remove_at(value: &mut serde_yaml_ng::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        let next = match segment {
            Segment::Map { key } => at.get_mut(key.as_str()),
            Segment::Seq { index } => at.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Segment::Map { key }, serde_yaml_ng::Value::Mapping(map)) => {
            map.remove(key.as_str()).is_some()
        }
        (Segment::Seq { index }, serde_yaml_ng::Value::Sequence(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        _ => false,
    }
}

/// How many problems one file reports at most before it stops reading.
const MAX_PROBLEMS: usize = 50;

/// Parse `text` (named `file` in messages) and validate it. `known` answers whether a service
/// not in this file already exists, for affinity rules.
///
/// Every problem is listed: a syntax error (reading stops there) or a duplicate key, else
/// each field of the wrong type or unknown, and each failed check.
pub fn parse_spec_file(
    file: &str,
    text: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<SpecFile, SpecFileError> {
    let problem = |line: Option<usize>, field: String, message: String| SpecProblem {
        file: file.to_string(),
        line,
        field,
        message,
    };
    let fail = |problems: Vec<SpecProblem>| SpecFileError { problems };
    if text.trim_start().starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        let spec: SpecFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let inner = e.inner();
            let message = inner.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string();
            let line = Some(inner.line());
            fail(vec![problem(
                line,
                e.path().to_string(),
                in_user_words(&message, text, line),
            )])
        })?;
        return validate(file, text, spec, known, vec![]);
    }
    // First the syntax, and duplicate keys (a second `web:` would silently replace the first).
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let message = without_location(&e.to_string());
        let (path, message) = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') => (prefix.to_string(), rest.to_string()),
            _ => (String::new(), message),
        };
        if let Some(key) = duplicate_key(&message) {
            let lines = super::locate::lines_of_key(text, &path, &key);
            let (first, second) = (lines.first().copied(), lines.get(1).copied());
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let earlier = first.map_or(String::new(), |n| format!(" (first at line {n})"));
            return fail(vec![problem(
                second.or(line),
                field,
                format!("duplicate key `{key}`{earlier}: each key may appear once; the second would replace the first"),
            )]);
        }
        fail(vec![problem(
            line,
            path,
            in_user_words(&message, text, line),
        )])
    })?;
    // Then the fields: each one of the wrong type or unknown is noted and taken out, and
    // the rest read again, so one run lists them all.
    let mut problems = vec![];
    let mut taken_out = std::collections::HashSet::new();
    let spec = loop {
        match serde_path_to_error::deserialize::<_, SpecFile>(value.clone()) {
            Ok(spec) => break Some(spec),
            Err(e) => {
                let path = e.path().to_string();
                let message = without_location(&e.inner().to_string());
                let message = match message.split_once(": ") {
                    Some((prefix, rest)) if !prefix.contains(' ') => rest.to_string(),
                    _ => message,
                };
                // A required field taken out after its own problem is missing now: not a
                // second problem; its parent goes instead.
                let missing = message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.strip_suffix('`'))
                    .map(|field| format!("{path}.{field}"));
                if !missing.is_some_and(|m| taken_out.contains(&m)) {
                    let line = line_of(text, &path);
                    problems.push(problem(
                        line,
                        path.clone(),
                        in_user_words(&message, text, line),
                    ));
                }
                taken_out.insert(path);
                if problems.len() >= MAX_PROBLEMS || !remove_at(&mut value, e.path()) {
                    break None;
                }
            }
        }
    };
    match spec {
        Some(spec) => validate(file, text, spec, known, problems),
        None => Err(fail(problems)),
    }
}

/// `duplicate entry with key "web"` -> `web`.
fn duplicate_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("duplicate entry with key ")?;
    Some(rest.trim_matches(|c| c == '"' || c == '`').to_string())
}

/// The checks serde cannot make, added to what reading found; errors in file order.
fn validate(
    file: &str,
    text: &str,
    spec: SpecFile,
    known: &dyn Fn(&str) -> bool,
    mut problems: Vec<SpecProblem>,
) -> Result<SpecFile, SpecFileError> {
    if let Err(errors) = validate_services(&spec.services, known) {
        problems.extend(errors.into_iter().map(|e| SpecProblem {
            file: file.to_string(),
            line: line_of(text, &e.path),
            field: e.path,
            message: e.message,
        }));
    }
    for (name, volume) in &spec.volumes {
        for message in volume.check(name) {
            let (field, message) = message.split_once(": ").unwrap_or(("", &message));
            let path = if field.is_empty() || field == "name" {
                format!("volumes.{name}")
            } else {
                format!("volumes.{name}.{field}")
            };
            problems.push(SpecProblem {
                file: file.to_string(),
                line: line_of(text, &path),
                field: path,
                message: message.to_string(),
            });
        }
    }
    if problems.is_empty() {
        return Ok(spec);
    }
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    problems.dedup();
    Err(SpecFileError { problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse_spec_file("shop.yaml", text, &|_| false)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_file_parses() {
        let text = "services:\n  web:\n    image: nginx\n    replicas: 3\n    resources:\n      requests: {cpu: 0.5, memory: 128Mi}\n";
        let spec = parse_spec_file("shop.yaml", text, &|_| false).unwrap();
        assert_eq!(spec.services["web"].replicas, 3);
        assert_eq!(
            spec.services["web"].resources.requests.cpu,
            Some(crate::spec::Cpu(500))
        );
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let e = error("services:\n  web:\n    image: nginx\n    replica: 3\n");
        assert!(
            e.starts_with(
                "shop.yaml:4: services.web.replica: unknown field `replica`, expected one of"
            ),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = error("services:\n  web:\n    image: nginx\n    replicas: many\n");
        assert!(
            e.starts_with(
                "shop.yaml:4: services.web.replicas: got the text \"many\", expected a whole number"
            ),
            "{e}"
        );
    }

    #[test]
    fn negative_memory_and_bad_port_say_what_is_allowed() {
        let e = error("services:\n  web:\n    image: nginx\n    resources:\n      limits:\n        memory: -5\n");
        assert!(
            e.contains("shop.yaml:6: services.web.resources.limits.memory")
                && e.contains("at most 16Ti"),
            "{e}"
        );
        let e =
            error("services:\n  web:\n    image: nginx\n    ports:\n      - container: 70000\n");
        assert!(e.contains("shop.yaml:5: services.web.ports[0].container: port 70000 is out of range: expected a port number from 1 to 65535"), "{e}");
    }

    #[test]
    fn a_bad_priority_names_file_line_and_field() {
        let e = error("services:\n  web:\n    image: nginx\n    priority: urgent\n");
        assert!(
            e.starts_with("shop.yaml:4: services.web.priority: `urgent` is not a priority: `low`"),
            "{e}"
        );
        let text = "services:\n  web:\n    image: nginx\n    priority: high\n";
        let spec = parse_spec_file("shop.yaml", text, &|_| false).unwrap();
        assert_eq!(spec.services["web"].priority, crate::spec::Priority::HIGH);
    }

    #[test]
    fn network_rules_with_a_bad_port_or_range_name_the_line_and_field() {
        let e = error("services:\n  pay:\n    image: pay\n    network:\n      ingress:\n        - from: {service: pay}\n          ports: [70000]\n");
        assert!(
            e.contains(
                "shop.yaml:7: services.pay.network.ingress[0].ports[0]: port 70000 is out of range"
            ),
            "{e}"
        );
        let e = error("services:\n  pay:\n    image: pay\n    network:\n      ingress:\n        - ports: [0]\n");
        assert!(
            e.contains("shop.yaml:6: services.pay.network.ingress[0].ports[0]: port 0"),
            "{e}"
        );
        let e = error("services:\n  pay:\n    image: pay\n    network:\n      ingress:\n        - from:\n            cidr: 192.0.2.0/33\n");
        assert!(
            e.contains("shop.yaml:7: services.pay.network.ingress[0].from.cidr"),
            "{e}"
        );
        let e = error("services:\n  pay:\n    image: pay\n    network:\n      ingress:\n        - from:\n            service: orders\n");
        assert!(e.contains("shop.yaml:7: services.pay.network.ingress[0].from.service: unknown service `orders`"), "{e}");
    }

    #[test]
    fn validation_errors_are_located() {
        let e = error("services:\n  web:\n    image: nginx\n  Bad_Name:\n    image: x\n    placement:\n      affinity:\n        - service: nope\n");
        assert!(
            e.contains(
                "shop.yaml:4: services.Bad_Name: service name `Bad_Name` is not a DNS label"
            ),
            "{e}"
        );
        assert!(e.contains("shop.yaml:8: services.Bad_Name.placement.affinity[0].service: unknown service `nope`"), "{e}");
    }

    #[test]
    fn security_names_are_checked_where_written() {
        let e = error("services:\n  web:\n    image: nginx\n    security:\n      cap_add: [NET_ADMIN, FLY]\n      user: ':5'\n      seccomp: off\n");
        assert!(
            e.contains("shop.yaml:7: services.web.security.seccomp"),
            "{e}"
        );
        let e = error("services:\n  web:\n    image: nginx\n    security:\n      cap_add: [NET_ADMIN, FLY]\n      user: ':5'\n");
        assert!(
            e.contains("services.web.security.cap_add[1]: `FLY` is not a Linux capability"),
            "{e}"
        );
        assert!(
            e.contains("services.web.security.user: `:5` is not a user"),
            "{e}"
        );
        let ok = parse_spec_file(
            "s.yaml",
            "services:\n  web:\n    image: nginx\n    security: {cap_drop: [all], cap_add: [cap_net_raw], read_only_root: true}\n",
            &|_| false,
        )
        .unwrap();
        assert_eq!(ok.services["web"].security.capabilities(), ["CAP_NET_RAW"]);
        // A spec without the block keeps its template hash: no rollout on upgrade.
        assert!(!serde_json::to_string(&crate::spec::ServiceSpec::new("x"))
            .unwrap()
            .contains("security"));
    }

    #[test]
    fn a_duplicate_service_is_an_error_at_its_second_line() {
        let e = error(
            "services:\n  web:\n    image: nginx\n  db:\n    image: pg\n  web:\n    image: other\n",
        );
        assert_eq!(
            e,
            "shop.yaml:6: services.web: duplicate key `web` (first at line 2): each key may appear once; the second would replace the first"
        );
        let e = error("services:\n  web:\n    image: nginx\n    replicas: 2\n    replicas: 3\n");
        assert!(
            e.starts_with(
                "shop.yaml:5: services.web.replicas: duplicate key `replicas` (first at line 4)"
            ),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_listed_in_file_order() {
        let e = error("services:\n  web:\n    image: nginx\n    replica: 3\n    ports:\n      - container: 70000\n  api:\n    image: api\n    replicas: many\n    colour: blue\n  Bad:\n    image: x\n");
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 5, "{e}");
        assert!(
            lines[0].starts_with("shop.yaml:4: services.web.replica: unknown field `replica`"),
            "{e}"
        );
        assert!(
            lines[1].starts_with("shop.yaml:6: services.web.ports[0].container: port 70000"),
            "{e}"
        );
        assert!(lines[2].starts_with("shop.yaml:9: services.api.replicas: got the text \"many\", expected a whole number"), "{e}");
        assert!(
            lines[3].starts_with("shop.yaml:10: services.api.colour: unknown field `colour`"),
            "{e}"
        );
        assert!(
            lines[4]
                .starts_with("shop.yaml:11: services.Bad: service name `Bad` is not a DNS label"),
            "{e}"
        );
    }

    #[test]
    fn tabs_and_unclosed_brackets_are_named() {
        let e = error("services:\n  web:\n\timage: nginx\n");
        assert!(e.starts_with("shop.yaml:3:"), "{e}");
        assert!(
            e.contains("a tab character: YAML indents with spaces only"),
            "{e}"
        );
        let e =
            error("services:\n  web:\n    image: nginx\n    command: [sh, -c\n    replicas: 2\n");
        assert!(
            e.contains("unclosed `[` (opened at line 4): a list in brackets needs its closing `]`"),
            "{e}"
        );
        let e = error("services:\n  web: {image: nginx\n");
        assert!(e.contains("unclosed `{`"), "{e}");
        let e = error("services:\n  web:\n    image: nginx\n    replicas: -1\n");
        assert!(e.contains("expected a whole number"), "{e}");
        assert!(!e.contains("u32"), "{e}");
    }

    #[test]
    fn json_is_accepted_and_located() {
        let spec = parse_spec_file(
            "s.json",
            "{\"services\": {\"web\": {\"image\": \"nginx\"}}}",
            &|_| false,
        )
        .unwrap();
        assert_eq!(spec.services["web"].image, "nginx");
        let e = parse_spec_file(
            "s.json",
            "{\n\"services\": {\"web\": {\"image\": \"nginx\",\n \"replicas\": -1}}}",
            &|_| false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("s.json:3: services.web.replicas: got `-1`, expected a whole number"),
            "{e}"
        );
    }
}
