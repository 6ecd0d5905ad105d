//! `${VAR}` and `${VAR:-default}` inside string values, applied to the parsed YAML tree (never
//! to the text), so an environment value can never inject YAML structure.

use serde_yaml::Value;

use super::{yaml_key, Problem};

pub(super) fn substitute_tree(
    v: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match v {
        Value::String(s) if s.contains('$') => match substitute(s, env) {
            Ok(new) => *s = new,
            Err(message) => problems.push(Problem {
                path: path.to_string(),
                message,
            }),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_tree(item, &format!("{path}[{i}]"), env, problems);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = yaml_key(k);
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                substitute_tree(item, &p, env, problems);
            }
        }
        Value::Tagged(t) => substitute_tree(&mut t.value, path, env, problems),
        _ => {}
    }
}

/// `${VAR}` must be set; `${VAR:-default}` falls back when unset or empty; `$${` is a literal `${`.
pub fn substitute(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${...} expression".to_string())?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad variable name in ${{{expr}}}"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
