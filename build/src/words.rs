//! Words and variables as Docker's builder reads them: quotes (`'...'` literal, `"..."`
//! with escapes and expansion), backslash escapes, and `$NAME`, `${NAME}`,
//! `${NAME:-default}`, `${NAME:+alternative}` (and the forms without `:`).

use std::collections::BTreeMap;

/// Variables visible to an instruction: ARG values, then ENV (which win).
pub type Vars = BTreeMap<String, String>;

/// Split `text` into words (on unquoted whitespace), expanding variables.
pub fn split(text: &str, vars: &Vars) -> Result<Vec<String>, String> {
    process(text, vars, true)
}

/// Expand variables in `text` and remove quotes, keeping it one word.
pub fn expand(text: &str, vars: &Vars) -> Result<String, String> {
    Ok(process(text, vars, false)?.join(""))
}

/// Expand variables only (quotes and backslashes kept): for exec-form strings.
pub fn expand_plain(text: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
        } else if chars[i] == '$' {
            let (s, next) = variable(&chars, i, vars)?;
            out.push_str(&s);
            i = next;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn process(text: &str, vars: &Vars, split_words: bool) -> Result<Vec<String>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() && split_words => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                i += 1;
            }
            '\\' => {
                in_word = true;
                match chars.get(i + 1) {
                    Some(n) => word.push(*n),
                    None => word.push('\\'),
                }
                i += 2;
            }
            '\'' => {
                in_word = true;
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '\'')
                    .ok_or("unmatched single quote")?;
                word.extend(&chars[i + 1..i + 1 + end]);
                i += end + 2;
            }
            '"' => {
                in_word = true;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unmatched double quote".into()),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(n @ ('"' | '\\' | '$')) => word.push(*n),
                                Some(n) => {
                                    word.push('\\');
                                    word.push(*n);
                                }
                                None => return Err("unmatched double quote".into()),
                            }
                            i += 2;
                        }
                        Some('$') => {
                            let (s, next) = variable(&chars, i, vars)?;
                            word.push_str(&s);
                            i = next;
                        }
                        Some(c) => {
                            word.push(*c);
                            i += 1;
                        }
                    }
                }
            }
            '$' => {
                in_word = true;
                let (s, next) = variable(&chars, i, vars)?;
                word.push_str(&s);
                i = next;
            }
            c => {
                in_word = true;
                word.push(c);
                i += 1;
            }
        }
    }
    if in_word || !split_words {
        words.push(word);
    }
    Ok(words)
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expand the variable at `chars[i] == '$'`: (value, index after it).
fn variable(chars: &[char], i: usize, vars: &Vars) -> Result<(String, usize), String> {
    let get = |name: &str| vars.get(name).cloned();
    match chars.get(i + 1) {
        Some('{') => {
            let close = chars[i + 2..]
                .iter()
                .position(|&c| c == '}')
                .ok_or("missing '}' in ${...}")?;
            let inner: String = chars[i + 2..i + 2 + close].iter().collect();
            let next = i + 3 + close;
            let name_len = inner.chars().take_while(|&c| is_name(c)).count();
            let (name, op) = inner.split_at(name_len);
            if name.is_empty() {
                return Err(format!("bad substitution ${{{inner}}}"));
            }
            let value = get(name);
            let out = match op {
                "" => value.unwrap_or_default(),
                _ if op.starts_with(":-") => match value.filter(|v| !v.is_empty()) {
                    Some(v) => v,
                    None => expand(&op[2..], vars)?,
                },
                _ if op.starts_with('-') => match value {
                    Some(v) => v,
                    None => expand(&op[1..], vars)?,
                },
                _ if op.starts_with(":+") => match value.filter(|v| !v.is_empty()) {
                    Some(_) => expand(&op[2..], vars)?,
                    None => String::new(),
                },
                _ if op.starts_with('+') => match value {
                    Some(_) => expand(&op[1..], vars)?,
                    None => String::new(),
                },
                _ => return Err(format!("unsupported substitution ${{{inner}}}")),
            };
            Ok((out, next))
        }
        Some(&c) if is_name(c) => {
            let len = chars[i + 1..].iter().take_while(|&&c| is_name(c)).count();
            let name: String = chars[i + 1..i + 1 + len].iter().collect();
            Ok((get(&name).unwrap_or_default(), i + 1 + len))
        }
        _ => Ok(("$".to_string(), i + 1)),
    }
}

/// `KEY=VALUE ...` pairs (ENV, LABEL), or the legacy `KEY VALUE` form when `legacy` and the
/// first word has no `=`.
pub fn pairs(text: &str, vars: &Vars, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let trimmed = text.trim();
    let first = trimmed.split_whitespace().next().unwrap_or("");
    if legacy && !first.contains('=') {
        let rest = trimmed[first.len()..].trim();
        return Ok(vec![(first.to_string(), expand(rest, vars)?)]);
    }
    let mut out = Vec::new();
    for w in split(text, vars)? {
        match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            _ => return Err(format!("expected KEY=VALUE, found {w:?}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [("A", "one"), ("EMPTY", ""), ("P", "/usr/bin")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_forms() {
        let v = vars();
        assert_eq!(expand("$A-${A}x", &v).unwrap(), "one-onex");
        assert_eq!(
            expand("${NOPE:-d}|${EMPTY:-d}|${EMPTY-d}", &v).unwrap(),
            "d|d|"
        );
        assert_eq!(expand("${A:+alt}|${NOPE:+alt}", &v).unwrap(), "alt|");
        assert_eq!(expand("'$A' \"$A\" \\$A", &v).unwrap(), "$A one $A");
        assert_eq!(expand("cost $", &v).unwrap(), "cost $");
        assert!(expand("${A", &v).is_err());
    }

    #[test]
    fn words_and_pairs() {
        let v = vars();
        assert_eq!(
            split("a \"b c\" 'd e' f\\ g", &v).unwrap(),
            vec!["a", "b c", "d e", "f g"]
        );
        assert_eq!(
            pairs("PATH=$P:/x NAME=\"two words\"", &v, true).unwrap(),
            vec![
                ("PATH".to_string(), "/usr/bin:/x".to_string()),
                ("NAME".to_string(), "two words".to_string())
            ]
        );
        assert_eq!(
            pairs("GREETING hello   world $A", &v, true).unwrap(),
            vec![("GREETING".to_string(), "hello   world one".to_string())]
        );
        assert!(pairs("novalue", &v, false).is_err());
        assert_eq!(expand_plain("${A}/\"q\"", &v).unwrap(), "one/\"q\"");
    }
}
