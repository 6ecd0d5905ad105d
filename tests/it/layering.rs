//! The crate's shape, checked: no module imports one on a higher layer, and no two modules import
//! each other, directly or around a cycle. The layers are the map in `src/lib.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module (a file or a folder of `src/`) -> layer, higher layers on top: one layer
/// per folder, the same table as `src/lib.rs` and `STYLE.md`.
const LAYERS: &[(&str, u8)] = &[
    ("main", 10),
    ("lib", 10),
    ("cmd", 10),
    ("server", 9),
    ("pipeline", 8),
    ("api", 7),
    ("state", 6),
    ("limiter", 5),
    ("proxy", 5),
    ("cors", 5),
    ("auth", 4),
    ("store", 3),
    ("config", 3),
    ("route", 3),
    ("error", 2),
    ("metrics", 2),
    ("telemetry", 2),
    ("body", 1),
    ("ratelimit", 1),
    ("net", 0),
    ("util", 0),
];

/// The layer of a module: its top-level module's (`store::redis::conn` is `store`'s).
fn layer(module: &str) -> u8 {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS
        .iter()
        .find(|(p, _)| *p == top)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module {module} has no layer in tests/it/layering.rs"))
}

/// Every module of `src/`, by path (`auth::jwt`), with its source outside `mod tests`.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix("src").unwrap().with_extension("");
                let mut name = rel.to_string_lossy().replace('/', "::");
                if let Some(parent) = name.strip_suffix("::mod") {
                    name = parent.to_string();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                out.insert(name, code);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("src"), &mut out);
    out
}

/// The module a `crate::a::b::c` path lands in: its longest prefix that is a module.
fn resolve<'a>(path: &str, modules: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").map(str::trim).collect();
    (1..=parts.len()).rev().find_map(|k| {
        let candidate = parts[..k].join("::");
        modules.get_key_value(&candidate).map(|(m, _)| m.as_str())
    })
}

/// The paths a `use crate::{a, b::{c, d}}` tree names, flattened.
fn flatten(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let (mut depth, mut start) = (0, 0);
    let bytes = tree.as_bytes();
    let mut items = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth -= 1,
            b',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    for item in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        let joined = |s: &str| {
            if prefix.is_empty() {
                s.to_string()
            } else {
                format!("{prefix}::{s}")
            }
        };
        match item.find("::{") {
            Some(i) if item.ends_with('}') => {
                flatten(&joined(&item[..i]), &item[i + 3..item.len() - 1], out)
            }
            _ => out.push(joined(item.split(" as ").next().unwrap_or(item))),
        }
    }
}

fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, code) in modules {
        let code: String = code
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut paths = Vec::new();
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(tree) = rest.strip_prefix('{') {
                let mut depth = 1;
                let end = tree
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(tree.len(), |(i, _)| i);
                flatten("", &tree[..end], &mut paths);
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                paths.push(rest[..end].trim_end_matches(':').to_string());
            }
        }
        let deps: BTreeSet<String> = paths
            .iter()
            .filter_map(|p| resolve(p, modules))
            .filter(|m| m != name)
            .map(str::to_string)
            .collect();
        graph.insert(name.clone(), deps);
    }
    graph
}

#[test]
fn no_module_imports_a_higher_layer() {
    let modules = modules();
    let graph = imports(&modules);
    let mut upward = Vec::new();
    for (m, deps) in &graph {
        for d in deps {
            if layer(d) > layer(m) {
                upward.push(format!(
                    "{m} (layer {}) -> {d} (layer {})",
                    layer(m),
                    layer(d)
                ));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
    // The checker itself finds imports (it would pass vacuously otherwise).
    assert!(
        graph["pipeline"].contains("auth"),
        "{:?}",
        graph["pipeline"]
    );
    assert!(graph["api::auth"].contains("limiter"));
}

#[test]
fn no_import_cycles() {
    let graph = imports(&modules());
    // Depth-first search with colours; a grey node met again closes a cycle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        colour.insert(m, 1);
        stack.push(m);
        for d in &graph[m] {
            match colour.get(d.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == d).unwrap_or(0);
                    cycles.push(format!("{} -> {d}", stack[from..].join(" -> ")));
                }
                Some(_) => {}
                None => visit(d, graph, colour, stack, cycles),
            }
        }
        stack.pop();
        colour.insert(m, 2);
    }
    let (mut colour, mut cycles) = (BTreeMap::new(), Vec::new());
    for m in graph.keys() {
        if !colour.contains_key(m.as_str()) {
            visit(m, &graph, &mut colour, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_and_a_nested_import() {
    let mut modules = BTreeMap::new();
    modules.insert("a".to_string(), "use crate::b::X;".to_string());
    modules.insert(
        "b".to_string(),
        "use crate::{c::{self, Y}, a::Z};".to_string(),
    );
    modules.insert("c".to_string(), String::new());
    let graph = imports(&modules);
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(
        graph["b"],
        BTreeSet::from(["a".to_string(), "c".to_string()])
    );
}
