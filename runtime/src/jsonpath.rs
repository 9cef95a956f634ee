//! Naming the field of a JSON error without a path-tracking deserializer.
//!
//! serde_json reports where in the text an error was found (line and column). This module
//! walks the text up to that point and says which field it was in: `process.args[0]`. A
//! path-tracking deserializer (serde_path_to_error) gives the same answer, but instantiating
//! it for the whole OCI spec made up an eighth of the `tug` binary.

/// One step of a path: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The path (`a.b[2].c`, or `.` for the document) of the value at 1-based `line`, `column`.
pub fn path_at(text: &str, line: usize, column: usize) -> String {
    let offset = offset_of(text, line, column);
    let bytes = text.as_bytes();
    // Per open container: its step so far (None for an object before its first key).
    let mut stack: Vec<Option<Step>> = Vec::new();
    let mut i = 0;
    let mut expecting_key = false;
    while i < offset.min(bytes.len()) {
        match bytes[i] {
            b'{' => {
                stack.push(None);
                expecting_key = true;
            }
            b'[' => {
                stack.push(Some(Step::Index(0)));
                expecting_key = false;
            }
            b'}' | b']' => {
                stack.pop();
                expecting_key = false;
            }
            b',' => match stack.last_mut() {
                Some(Some(Step::Index(n))) => *n += 1,
                Some(_) => expecting_key = true,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    if bytes[j] == b'\\' {
                        j += 1;
                    }
                    j += 1;
                }
                if expecting_key {
                    let key = text
                        .get(start..j.min(bytes.len()))
                        .unwrap_or("")
                        .to_string();
                    if let Some(top) = stack.last_mut() {
                        *top = Some(Step::Key(key));
                    }
                    expecting_key = false;
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    let mut out = String::new();
    for step in stack.into_iter().flatten() {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&k);
            }
            Step::Index(n) => out.push_str(&format!("[{n}]")),
        }
    }
    if out.is_empty() {
        ".".into()
    } else {
        out
    }
}

fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (n, l) in text.split_inclusive('\n').enumerate() {
        if n + 1 == line {
            return offset + column.min(l.len());
        }
        offset += l.len();
    }
    text.len()
}

/// Parses `text` as `T`; an error says the field path and what is wrong with it.
pub fn from_slice<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<T, (String, String)> {
    serde_json::from_slice(text).map_err(|e| {
        let s = String::from_utf8_lossy(text);
        let mut path = path_at(&s, e.line(), e.column());
        let msg = e.to_string();
        // "missing field `x`" points at the end of the object that lacks it.
        if let Some(rest) = msg.strip_prefix("missing field `") {
            if let Some(name) = rest.split('`').next() {
                path = if path == "." {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                };
            }
        }
        let message = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        (path, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Spec;

    fn err_path(json: &str) -> String {
        from_slice::<Spec>(json.as_bytes()).unwrap_err().0
    }

    #[test]
    fn names_the_field_of_a_type_error() {
        let j = r#"{"ociVersion": "1.0.2", "process": {"cwd": "/", "args": ["sh", 3]}}"#;
        assert_eq!(err_path(j), "process.args[1]");
        let j = "{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {\n    \"cwd\": \"/\",\n    \"user\": {\"uid\": \"x\", \"gid\": 0}\n  }\n}";
        assert_eq!(err_path(j), "process.user.uid");
        let j = r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "pid"}, {"type": "nope"}]}}"#;
        assert_eq!(err_path(j), "linux.namespaces[1].type");
    }

    #[test]
    fn names_a_missing_field_and_the_document() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            need: u32,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            list: Vec<Inner>,
        }
        let e = from_slice::<Outer>(br#"{"list": [{"need": 1}, {"other": 2}]}"#).unwrap_err();
        assert_eq!(e.0, "list[1].need");
        assert!(e.1.contains("missing field"), "{}", e.1);
        assert_eq!(err_path("{ not json"), ".");
    }

    #[test]
    fn escaped_quotes_in_strings_do_not_confuse_it() {
        let j = r#"{"ociVersion": "1.0.2", "hostname": "a\"b", "process": {"cwd": "/", "args": [true]}}"#;
        assert_eq!(err_path(j), "process.args[0]");
    }
}
