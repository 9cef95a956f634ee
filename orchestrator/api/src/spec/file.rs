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

/// Parse `text` (named `file` in messages) and validate it. `known` answers whether a service
/// not in this file already exists, for affinity rules.
pub fn parse_spec_file(
    file: &str,
    text: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<SpecFile, SpecFileError> {
    let problem = |line, field: String, message: String| SpecFileError {
        problems: vec![SpecProblem {
            file: file.to_string(),
            line,
            field,
            message,
        }],
    };
    let spec: SpecFile = if text.trim_start().starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let inner = e.inner();
            let message = inner.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string();
            problem(Some(inner.line()), e.path().to_string(), message)
        })?
    } else {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let line = e.inner().location().map(|l| l.line());
            let path = e.path().to_string();
            let message = without_location(&e.inner().to_string());
            // serde_yaml puts the path in front of its message too; keep one copy.
            let message = match message.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(' ') => rest.to_string(),
                _ => message,
            };
            problem(line, path, message)
        })?
    };
    validate_services(&spec.services, known).map_err(|errors| SpecFileError {
        problems: errors
            .into_iter()
            .map(|e| SpecProblem {
                file: file.to_string(),
                line: line_of(text, &e.path),
                field: e.path,
                message: e.message,
            })
            .collect(),
    })?;
    Ok(spec)
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
            e.starts_with("shop.yaml:4: services.web.replicas: invalid type: string \"many\""),
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
            e.starts_with("s.json:3: services.web.replicas: invalid value"),
            "{e}"
        );
    }
}
