//! Parsing a Dockerfile (or Containerfile) into instructions with their line numbers.
//!
//! What Docker's parser does, for the instructions `tugboat build` supports: comments
//! (`#` first on a line, also inside a continuation), line continuations (`\` at the end of
//! a line), case-insensitive keywords, `--flag=value` options, and the exec (JSON array) and
//! shell forms. Variables are expanded later, when the instruction runs (ARG and ENV values
//! are known only then); see [`crate::words`].

/// A command given in exec form (`["a", "b"]`) or shell form (`a b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

/// COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    /// ADD: local tar archives are extracted.
    pub add: bool,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// Sources then destination, unexpanded (exec-form strings or shell words).
    pub paths: Vec<String>,
    /// The paths came from a JSON array (then they are not split on spaces).
    pub json: bool,
}

/// One instruction, with its arguments as written (variables not yet expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
        alias: Option<String>,
    },
    Run(Command),
    Copy(CopySpec),
    /// `KEY=VALUE ...` or the legacy `KEY VALUE`: the raw text.
    Env(String),
    /// `NAME[=default] ...`: the raw text.
    Arg(String),
    Workdir(String),
    User(String),
    Expose(String),
    Label(String),
    Cmd(Command),
    Entrypoint(Command),
    /// A JSON array or space-separated paths: the raw text.
    Volume(String),
    Shell(Vec<String>),
    StopSignal(String),
}

/// An instruction and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The line the instruction starts on (1-based).
    pub line: usize,
    /// The keyword, upper case (`COPY`).
    pub keyword: String,
    /// The rest of the logical line, continuations joined.
    pub text: String,
    pub instruction: Instruction,
}

/// A parse error: the line and what is wrong (the caller adds the file name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parse a whole Dockerfile.
pub fn parse(text: &str) -> Result<Vec<Step>, ParseError> {
    let mut steps = Vec::new();
    for (line, logical) in logical_lines(text) {
        steps.push(parse_line(line, &logical)?);
    }
    check_from(&steps)?;
    Ok(steps)
}

/// Join continuations and drop comments and blank lines: (first line, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') {
            // A comment, or a parser directive at the top: neither is an instruction.
            continue;
        }
        if trimmed.trim_end().is_empty() {
            if let Some((_, s)) = &current {
                // An empty line inside a continuation is skipped (Docker warns).
                if !s.is_empty() {
                    continue;
                }
            }
            continue;
        }
        let body = raw.trim_end();
        let (part, continues) = match body.strip_suffix('\\') {
            Some(p) => (p, true),
            None => (body, false),
        };
        let entry = current.get_or_insert_with(|| (n, String::new()));
        // As Docker: the escape and newline go, the next line's text follows as written.
        if entry.1.is_empty() {
            entry.1.push_str(part.trim_start());
        } else {
            entry.1.push_str(part);
        }
        if !continues {
            out.push(current.take().expect("set above"));
        }
    }
    if let Some(last) = current {
        if !last.1.trim().is_empty() {
            out.push(last);
        }
    }
    out
}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// `--name=value` options at the start of `rest`: (options, the remaining text).
fn take_flags(rest: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    let mut rest = rest.trim_start();
    while let Some(after) = rest.strip_prefix("--") {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let flag = &after[..end];
        match flag.split_once('=') {
            Some((k, v)) => flags.push((k.to_string(), Some(v.to_string()))),
            None => flags.push((flag.to_string(), None)),
        }
        rest = after[end..].trim_start();
    }
    (flags, rest)
}

/// A JSON array of strings, if `text` is one.
fn json_array(text: &str) -> Option<Vec<String>> {
    let t = text.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

fn command(text: &str) -> Command {
    match json_array(text) {
        Some(args) => Command::Exec(args),
        None => Command::Shell(text.trim().to_string()),
    }
}

fn parse_line(line: usize, text: &str) -> Result<Step, ParseError> {
    let text = text.trim();
    let (word, rest) = match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    };
    let keyword = word.to_ascii_uppercase();
    let known = [
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "EXPOSE",
        "LABEL",
        "CMD",
        "ENTRYPOINT",
        "VOLUME",
        "SHELL",
        "STOPSIGNAL",
        "MAINTAINER",
        "HEALTHCHECK",
        "ONBUILD",
    ];
    if !known.contains(&keyword.as_str()) {
        return Err(err(line, format!("unknown instruction {word:?}")));
    }
    let needs_args = |what: &str| {
        if rest.trim().is_empty() {
            Err(err(line, format!("{keyword}: {what}")))
        } else {
            Ok(())
        }
    };
    let (flags, args) = take_flags(rest);
    let allow_flags = |allowed: &[&str]| -> Result<(), ParseError> {
        for (k, _) in &flags {
            if !allowed.contains(&k.as_str()) {
                return Err(err(line, format!("{keyword}: unknown flag --{k}")));
            }
        }
        Ok(())
    };
    let flag = |name: &str| -> Result<Option<String>, ParseError> {
        match flags.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, Some(v))) if !v.is_empty() => Ok(Some(v.clone())),
            Some(_) => Err(err(line, format!("{keyword}: --{name} needs a value"))),
        }
    };
    let instruction = match keyword.as_str() {
        "FROM" => {
            allow_flags(&["platform"])?;
            let words: Vec<&str> = args.split_whitespace().collect();
            match words.as_slice() {
                [image] => Instruction::From {
                    image: image.to_string(),
                    alias: None,
                },
                [image, kw, alias] if kw.eq_ignore_ascii_case("as") => {
                    let alias = alias.to_ascii_lowercase();
                    if !alias
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    {
                        return Err(err(line, format!("FROM: invalid stage name {alias:?}")));
                    }
                    Instruction::From {
                        image: image.to_string(),
                        alias: Some(alias),
                    }
                }
                _ => {
                    return Err(err(
                        line,
                        "FROM: expected `FROM IMAGE` or `FROM IMAGE AS NAME`",
                    ))
                }
            }
        }
        "RUN" => {
            if let Some((k, _)) = flags.first() {
                return Err(err(
                    line,
                    format!("RUN: --{k} is not supported by tugboat build"),
                ));
            }
            needs_args("needs a command")?;
            Instruction::Run(command(args))
        }
        "COPY" | "ADD" => {
            allow_flags(&["from", "chown", "chmod", "link"])?;
            let (paths, json) = match json_array(args) {
                Some(p) => (p, true),
                None => (args.split_whitespace().map(str::to_string).collect(), false),
            };
            if paths.len() < 2 {
                return Err(err(
                    line,
                    format!("{keyword}: needs at least one source and a destination"),
                ));
            }
            Instruction::Copy(CopySpec {
                add: keyword == "ADD",
                from: flag("from")?,
                chown: flag("chown")?,
                chmod: flag("chmod")?,
                paths,
                json,
            })
        }
        "ENV" => {
            needs_args("needs KEY=VALUE")?;
            Instruction::Env(rest.to_string())
        }
        "ARG" => {
            needs_args("needs a name")?;
            Instruction::Arg(rest.to_string())
        }
        "WORKDIR" => {
            needs_args("needs a path")?;
            Instruction::Workdir(rest.to_string())
        }
        "USER" => {
            needs_args("needs a user")?;
            Instruction::User(rest.to_string())
        }
        "EXPOSE" => {
            needs_args("needs a port")?;
            Instruction::Expose(rest.to_string())
        }
        "LABEL" => {
            needs_args("needs KEY=VALUE")?;
            Instruction::Label(rest.to_string())
        }
        "MAINTAINER" => {
            needs_args("needs a name")?;
            Instruction::Label(format!(
                "maintainer={}",
                serde_json::to_string(rest).expect("string")
            ))
        }
        "CMD" => {
            needs_args("needs a command")?;
            Instruction::Cmd(command(rest))
        }
        "ENTRYPOINT" => {
            needs_args("needs a command")?;
            Instruction::Entrypoint(command(rest))
        }
        "VOLUME" => {
            needs_args("needs a path")?;
            Instruction::Volume(rest.to_string())
        }
        "SHELL" => match json_array(rest) {
            Some(s) if !s.is_empty() => Instruction::Shell(s),
            _ => {
                return Err(err(
                    line,
                    "SHELL: needs a JSON array, e.g. [\"/bin/sh\", \"-c\"]",
                ))
            }
        },
        "STOPSIGNAL" => {
            needs_args("needs a signal")?;
            Instruction::StopSignal(rest.to_string())
        }
        other => {
            return Err(err(
                line,
                format!("{other}: not supported by tugboat build"),
            ))
        }
    };
    Ok(Step {
        line,
        keyword,
        text: rest.to_string(),
        instruction,
    })
}

/// Only ARG may come before the first FROM, and there must be one.
fn check_from(steps: &[Step]) -> Result<(), ParseError> {
    for s in steps {
        match s.instruction {
            Instruction::From { .. } => return Ok(()),
            Instruction::Arg(_) => {}
            _ => {
                return Err(err(
                    s.line,
                    format!("{}: no FROM before this instruction", s.keyword),
                ))
            }
        }
    }
    Err(err(
        steps.last().map(|s| s.line).unwrap_or(1),
        "no FROM instruction",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_forms() {
        let text = "# syntax comment\nARG BASE=scratch\nFROM $BASE AS one\n\nRUN echo a \\\n  # inside\n  && echo b\nCMD [\"/bin/sh\", \"-c\", \"x\"]\nentrypoint echo hi\nCOPY --chown=1:2 --from=one a b /c/\n";
        let steps = parse(text).unwrap();
        assert_eq!(steps.len(), 6);
        assert_eq!(steps[1].line, 3);
        assert_eq!(
            steps[1].instruction,
            Instruction::From {
                image: "$BASE".into(),
                alias: Some("one".into())
            }
        );
        assert_eq!(steps[2].line, 5);
        assert_eq!(
            steps[2].instruction,
            Instruction::Run(Command::Shell("echo a   && echo b".into()))
        );
        assert_eq!(
            steps[3].instruction,
            Instruction::Cmd(Command::Exec(vec![
                "/bin/sh".into(),
                "-c".into(),
                "x".into()
            ]))
        );
        assert_eq!(
            steps[4].instruction,
            Instruction::Entrypoint(Command::Shell("echo hi".into()))
        );
        match &steps[5].instruction {
            Instruction::Copy(c) => {
                assert_eq!(c.chown.as_deref(), Some("1:2"));
                assert_eq!(c.from.as_deref(), Some("one"));
                assert_eq!(c.paths, vec!["a", "b", "/c/"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("FROM scratch\n\nFOO bar\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unknown instruction \"FOO\""), "{e:?}");
        let e = parse("# c\nRUN true\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("no FROM"), "{e:?}");
        let e = parse("").unwrap_err();
        assert!(e.message.contains("no FROM"), "{e:?}");
        let e = parse("FROM scratch\nCOPY onlyone\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("FROM scratch\nRUN --mount=type=cache true\n").unwrap_err();
        assert!(e.message.contains("not supported"), "{e:?}");
        let e = parse("FROM scratch\nHEALTHCHECK NONE\n").unwrap_err();
        assert!(e.message.contains("HEALTHCHECK"), "{e:?}");
    }
}
