//! `${VAR}` and `${VAR:-default}` interpolation, applied to TOML text before parsing.
//!
//! Values are escaped for a TOML basic string, so an environment value can never change
//! the document's structure, and lines keep their numbers for error reports.

use std::collections::HashMap;

/// An unset variable or a malformed `${...}`, with its position in the raw text.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct InterpError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Where the scanner is in the TOML text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Bare,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

/// Replaces every `${...}` inside a string; `$$` is a literal `$`. Comments and bare values are
/// left alone. `lookup` is the environment.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpError> {
    let mut out = String::with_capacity(text.len());
    let (mut line, mut col) = (1, 1);
    let mut ctx = Ctx::Bare;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts = |pat: &str| {
            pat.chars()
                .enumerate()
                .all(|(k, p)| chars.get(i + k) == Some(&p))
        };
        let in_string = matches!(
            ctx,
            Ctx::Basic | Ctx::Literal | Ctx::MultiBasic | Ctx::MultiLiteral
        );
        if in_string && c == '$' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            col += 2;
            continue;
        }
        if in_string && c == '$' && chars.get(i + 1) == Some(&'{') {
            let err = |message: String| InterpError {
                line,
                column: col,
                message,
            };
            let Some(end) = matching_close(&chars, i + 2) else {
                return Err(err("unterminated `${`".into()));
            };
            let len = end - (i + 2);
            let (name, value) = expand(&chars[i + 2..end], lookup, true, 0).map_err(err)?;
            let value = value.unwrap_or_default();
            match ctx {
                Ctx::Basic | Ctx::MultiBasic => escape_into(&value, &mut out),
                _ if value.contains(['\'', '\n', '\r']) => {
                    return Err(err(format!(
                        "`{name}` holds a quote or newline; use a \"double-quoted\" string"
                    )))
                }
                _ => out.push_str(&value),
            }
            i += len + 3;
            col += len + 3;
            continue;
        }
        let mut take = 1;
        ctx = match ctx {
            Ctx::Bare if c == '#' => Ctx::Comment,
            Ctx::Bare if starts("\"\"\"") => {
                take = 3;
                Ctx::MultiBasic
            }
            Ctx::Bare if starts("'''") => {
                take = 3;
                Ctx::MultiLiteral
            }
            Ctx::Bare if c == '"' => Ctx::Basic,
            Ctx::Bare if c == '\'' => Ctx::Literal,
            Ctx::Comment if c == '\n' => Ctx::Bare,
            Ctx::Basic | Ctx::MultiBasic if c == '\\' => {
                take = 2;
                ctx
            }
            Ctx::Basic if c == '"' || c == '\n' => Ctx::Bare,
            Ctx::Literal if c == '\'' || c == '\n' => Ctx::Bare,
            Ctx::MultiBasic if starts("\"\"\"") => {
                take = 3;
                Ctx::Bare
            }
            Ctx::MultiLiteral if starts("'''") => {
                take = 3;
                Ctx::Bare
            }
            other => other,
        };
        for &ch in chars.iter().skip(i).take(take) {
            out.push(ch);
            if ch == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        i += take;
    }
    Ok(out)
}

/// Deepest `${A:-${B:-...}}` nesting accepted.
const MAX_NESTING: usize = 8;

/// The index of the `}` closing the `${` whose body starts at `from`, counting nested `${`;
/// none before the end of the line.
fn matching_close(chars: &[char], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = from;
    while j < chars.len() {
        match chars[j] {
            '\n' => return None,
            '$' if matches!(chars.get(j + 1), Some('$')) => j += 1,
            '$' if matches!(chars.get(j + 1), Some('{')) => {
                depth += 1;
                j += 1;
            }
            '}' if depth == 0 => return Some(j),
            '}' => depth -= 1,
            _ => {}
        }
        j += 1;
    }
    None
}

/// Expands one `${...}` body: `NAME` or `NAME:-default`, where the default may itself hold
/// `${...}` and `$$`. Returns the name (for messages) and the raw, unescaped value. With `eval`
/// false (a default that is not used) the body is only checked, so an unused default never needs
/// its variables set.
fn expand(
    body: &[char],
    lookup: &dyn Fn(&str) -> Option<String>,
    eval: bool,
    depth: usize,
) -> Result<(String, Option<String>), String> {
    if depth > MAX_NESTING {
        return Err(format!("`${{` nested more than {MAX_NESTING} deep"));
    }
    let text: String = body.iter().collect();
    let (name, default) = match text.split_once(":-") {
        Some((n, d)) => (n.to_string(), Some(d.chars().collect::<Vec<char>>())),
        None => (text.clone(), None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("invalid variable name `{name}`"));
    }
    let found = if eval { lookup(&name) } else { None };
    let use_default = !matches!(&found, Some(v) if default.is_none() || !v.is_empty());
    let mut value = String::new();
    if let Some(d) = &default {
        let mut k = 0;
        while k < d.len() {
            if d[k] == '$' && d.get(k + 1) == Some(&'$') {
                value.push('$');
                k += 2;
            } else if d[k] == '$' && d.get(k + 1) == Some(&'{') {
                let end = matching_close(d, k + 2).ok_or("unterminated `${`")?;
                let (_, v) = expand(&d[k + 2..end], lookup, eval && use_default, depth + 1)?;
                value.push_str(&v.unwrap_or_default());
                k = end + 1;
            } else {
                value.push(d[k]);
                k += 1;
            }
        }
    }
    if !eval {
        return Ok((name, None));
    }
    match (found, default.is_some()) {
        (Some(v), _) if !use_default => Ok((name, Some(v))),
        (_, true) => Ok((name, Some(value))),
        (_, false) => Err(format!(
            "environment variable `{name}` is not set and has no default (use ${{{name}:-default}})"
        )),
    }
}

fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
}

/// The process environment as a lookup function.
pub fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A fixed map as a lookup function, for tests.
pub fn map_lookup(map: HashMap<&str, &str>) -> impl Fn(&str) -> Option<String> {
    let owned: HashMap<String, String> = map
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| owned.get(k).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<String, InterpError> {
        let env = map_lookup(HashMap::from([
            ("HOST", "127.0.0.1"),
            ("EMPTY", ""),
            ("Q", "a\"b"),
        ]));
        interpolate(text, &env)
    }

    #[test]
    fn table() {
        let cases = [
            ("a = \"${HOST}\"", "a = \"127.0.0.1\""),
            ("a = \"${NOPE:-x}\"", "a = \"x\""),
            ("a = \"${EMPTY:-d}\"", "a = \"d\""),
            ("a = \"${EMPTY}\"", "a = \"\""),
            ("a = \"$${HOST}\"", "a = \"${HOST}\""),
            ("a = \"${Q}\"", "a = \"a\\\"b\""),
            ("a = \"$x\"", "a = \"$x\""),
            (
                "# ${NOT_SET} in a comment\na = 1",
                "# ${NOT_SET} in a comment\na = 1",
            ),
            ("a = '${HOST}'", "a = '127.0.0.1'"),
            ("a = \"\\\"${HOST}\"", "a = \"\\\"127.0.0.1\""),
            ("a = \"\"\"\n${HOST}\"\"\"", "a = \"\"\"\n127.0.0.1\"\"\""),
            ("a = \"${NOPE:-${HOST}/x}\"", "a = \"127.0.0.1/x\""),
            ("a = \"${NOPE:-${NOPE2:-${EMPTY:-d}}/y}z\"", "a = \"d/yz\""),
            ("a = \"${HOST:-${UNSET_BUT_UNUSED}}\"", "a = \"127.0.0.1\""),
            ("a = \"${NOPE:-$${HOST}}\"", "a = \"${HOST}\""),
            ("a = \"${NOPE:-${Q}}\"", "a = \"a\\\"b\""),
        ];
        for (input, want) in cases {
            assert_eq!(run(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn errors_carry_position() {
        let e = run("x = 1\ny = \"${NOPE}\"").unwrap_err();
        assert_eq!((e.line, e.column), (2, 6));
        assert!(e.message.contains("NOPE"));
        assert!(run("a = \"${bad name}\"").is_err());
        assert!(run("a = \"${OPEN").is_err());
        assert!(run("a = \"${NOPE:-${OPEN}").is_err());
        assert!(run("a = \"${NOPE:-${UNSET}}\"").is_err());
        assert!(run("a = \"${HOST:-${bad name}}\"").is_err());
    }
}
